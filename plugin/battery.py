"""The relay battery: every trick a spammer uses to get mail through, one row each.

A row names the envelope it sends as templates.  The placeholders are filled from
`Envelope` once the target is known (its host name may come from its banner).
Recipient tricks use the plain outside sender so that each row isolates one trick.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RelayTest:
    id: str
    purpose: str
    mail_from: str
    rcpt_to: str


@dataclass(frozen=True)
class Envelope:
    """The values a test template may name."""

    sender: str            # the outside sender, user@domain
    recipient: str         # the outside recipient, user@domain
    target_host: str       # the name the target calls itself
    target_domain: str     # a domain the target is final destination for
    target_literal: str    # the target's address as an RFC 5321 literal, e.g. [192.0.2.10]
    foreign_literal: str   # an address literal that is not the target's

    def fields(self) -> dict[str, str]:
        sender_user = self.sender.rpartition("@")[0]
        relay_user, _, relay_domain = self.recipient.rpartition("@")
        return {
            "sender": self.sender,
            "sender_user": sender_user,
            "recipient": self.recipient,
            "relay_user": relay_user,
            "relay_domain": relay_domain,
            "target_host": self.target_host,
            "target_domain": self.target_domain,
            "target_literal": self.target_literal,
            "foreign_literal": self.foreign_literal,
        }


@dataclass(frozen=True)
class Attempt:
    """One row with its templates filled: the exact command arguments sent."""

    test: RelayTest
    mail_from: str
    rcpt_to: str


_SENDER = "<{sender}>"
_RCPT = "<{recipient}>"

BATTERY: tuple[RelayTest, ...] = (
    # Who may send: relay granted on the strength of the sender.
    RelayTest("plain", "plain third party: outside sender to outside recipient",
              _SENDER, _RCPT),
    RelayTest("null-sender", "null sender (bounce) to outside recipient",
              "<>", _RCPT),
    RelayTest("spoof-host", "sender spoofs the target's own host name",
              "<{sender_user}@{target_host}>", _RCPT),
    RelayTest("spoof-domain", "sender spoofs the target's mail domain",
              "<{sender_user}@{target_domain}>", _RCPT),
    RelayTest("spoof-literal", "sender spoofs the target's address literal",
              "<{sender_user}@{target_literal}>", _RCPT),
    RelayTest("spoof-localhost", "sender claims to be at localhost",
              "<{sender_user}@localhost>", _RCPT),
    RelayTest("spoof-unqualified", "unqualified sender, taken as local",
              "<{sender_user}>", _RCPT),
    # Where to: recipient forms that hide the outside destination.
    RelayTest("percent-hack-literal", "percent hack via the target's address literal",
              _SENDER, "<{relay_user}%{relay_domain}@{target_literal}>"),
    RelayTest("percent-hack-host", "percent hack via the target's host name",
              _SENDER, "<{relay_user}%{relay_domain}@{target_host}>"),
    RelayTest("percent-hack-empty", "percent hack with an empty domain",
              _SENDER, "<{relay_user}%{relay_domain}@>"),
    RelayTest("quoted-at", "quoted local part holding user@relay",
              _SENDER, '<"{relay_user}@{relay_domain}">'),
    RelayTest("quoted-percent", "quoted local part holding user%relay",
              _SENDER, '<"{relay_user}%{relay_domain}">'),
    RelayTest("quoted-at-host", "quoted user@relay at the target's host name",
              _SENDER, '<"{relay_user}@{relay_domain}"@{target_host}>'),
    RelayTest("quoted-at-literal", "quoted user@relay at the target's address literal",
              _SENDER, '<"{relay_user}@{relay_domain}"@{target_literal}>'),
    RelayTest("double-at-host", "user@relay@target host name",
              _SENDER, "<{relay_user}@{relay_domain}@{target_host}>"),
    RelayTest("double-at-literal", "user@relay@target address literal",
              _SENDER, "<{relay_user}@{relay_domain}@{target_literal}>"),
    RelayTest("double-at-empty", "user@relay@ with an empty trailing domain",
              _SENDER, "<{relay_user}@{relay_domain}@>"),
    RelayTest("source-route-host", "RFC 821 source route via the target's host name",
              _SENDER, "<@{target_host}:{relay_user}@{relay_domain}>"),
    RelayTest("source-route-literal", "RFC 821 source route via the target's address literal",
              _SENDER, "<@{target_literal}:{relay_user}@{relay_domain}>"),
    RelayTest("bang-path", "UUCP bang path relay!user",
              _SENDER, "<{relay_domain}!{relay_user}>"),
    RelayTest("bang-path-host", "bang path at the target's host name",
              _SENDER, "<{relay_domain}!{relay_user}@{target_host}>"),
    RelayTest("bang-path-literal", "bang path at the target's address literal",
              _SENDER, "<{relay_domain}!{relay_user}@{target_literal}>"),
    RelayTest("unbracketed", "recipient without angle brackets (RFC 822 parser path)",
              _SENDER, "{recipient}"),
    RelayTest("foreign-literal", "recipient at a foreign address literal",
              _SENDER, "<{relay_user}@{foreign_literal}>"),
    RelayTest("postmaster", "postmaster at the outside domain (often exempt)",
              _SENDER, "<postmaster@{relay_domain}>"),
    RelayTest("abuse", "abuse at the outside domain (often exempt)",
              _SENDER, "<abuse@{relay_domain}>"),
)

TEST_IDS: tuple[str, ...] = tuple(test.id for test in BATTERY)


def select(ids: list[str] | None) -> tuple[RelayTest, ...]:
    """The rows named by `ids` in battery order; all rows for None or ['all']."""
    if not ids or ids == ["all"]:
        return BATTERY
    unknown = sorted(set(ids) - set(TEST_IDS) - {"all"})
    if unknown:
        raise ValueError(f"unknown test id: {', '.join(unknown)} (see --list-tests)")
    if "all" in ids:
        return BATTERY
    wanted = set(ids)
    return tuple(test for test in BATTERY if test.id in wanted)


def render(tests: tuple[RelayTest, ...], envelope: Envelope) -> list[Attempt]:
    fields = envelope.fields()
    return [
        Attempt(test, test.mail_from.format(**fields), test.rcpt_to.format(**fields))
        for test in tests
    ]


def address_literal(address: str) -> str:
    """RFC 5321 section 4.1.3 form of an IP address."""
    return f"[IPv6:{address}]" if ":" in address else f"[{address}]"
