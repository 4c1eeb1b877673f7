"""Reply → outcome.  One table, first matching rule wins, each rule says why.

A relay attempt proves something only when the server decided about *relaying*:
acceptance (2xx) or a refusal by policy or of the address form.  Refusals that blame
the existence of a domain, a route, or a temporary condition prove nothing, since a
spammer with a real domain and some patience would not meet them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from .reply import Reply


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    REFUSED = "refused"
    INCONCLUSIVE = "inconclusive"
    TEMPFAIL = "tempfail"
    UNTESTED = "untested"


MAIL = "MAIL"
RCPT = "RCPT"


@dataclass(frozen=True)
class Rule:
    stages: frozenset[str]
    codes: str               # reply code prefix: "2", "4", "530"
    enhanced: str = ""       # enhanced status code prefix: "5.7.", "5.1.2"
    text: str = ""           # regex searched in the reply text, case-insensitive
    outcome: Outcome = Outcome.INCONCLUSIVE
    reason: str = ""

    def matches(self, stage: str, reply: Reply) -> bool:
        if stage not in self.stages or not str(reply.code).startswith(self.codes):
            return False
        if self.enhanced and not (reply.enhanced or "").startswith(self.enhanced):
            return False
        return not self.text or re.search(self.text, reply.text, re.IGNORECASE) is not None


_BOTH = frozenset({MAIL, RCPT})
_ONLY_MAIL = frozenset({MAIL})
_ONLY_RCPT = frozenset({RCPT})
_DOMAIN_UNKNOWN = (r"domain not found|host not found|no such domain|domain does not exist"
                   r"|unrouteable|unroutable|name service error|no mx|null mx")
_CLIENT_BLOCKED = (r"client host|blocked using|block ?list|black ?list|\bdnsbl\b|\brbl\b"
                   r"|spamhaus")
# Worded, not just "relay": servers echo the address, and relaytest@relay.example.net
# in any refusal would otherwise read as a relay verdict.
_RELAY_DENIED = (r"relay(ing)? (access )?(denied|not permitted|not allowed|prohibited|refused)"
                 r"|(not permitted|not allowed|unable|cannot) to relay|no relaying")
_TLS_FIRST = r"starttls|\btls\b|encrypt"

RULES: tuple[Rule, ...] = (
    Rule(_ONLY_RCPT, "2", outcome=Outcome.ACCEPTED, reason="recipient accepted"),
    Rule(_ONLY_MAIL, "2", outcome=Outcome.ACCEPTED, reason="sender accepted"),
    Rule(_BOTH, "4", text=r"gr[ae]ylist", outcome=Outcome.TEMPFAIL, reason="greylisted"),
    # Postfix's stock defer_unauth_destination (Debian's default): the same relay
    # decision as 554 5.7.1, sent as 454 so that a mistake defers instead of bouncing.
    # Every retry gets it again, so it refuses the relay.
    Rule(_ONLY_RCPT, "4", enhanced="4.7.1", text=r"relay access denied",
         outcome=Outcome.REFUSED, reason="relaying refused (deferred by policy)"),
    Rule(_BOTH, "421", outcome=Outcome.TEMPFAIL, reason="server closing the connection"),
    Rule(_BOTH, "4", outcome=Outcome.TEMPFAIL, reason="temporary failure"),
    Rule(_BOTH, "5", text=_TLS_FIRST, enhanced="5.7.0", outcome=Outcome.INCONCLUSIVE,
         reason="server demands STARTTLS first"),
    Rule(_BOTH, "530", text=_TLS_FIRST, outcome=Outcome.INCONCLUSIVE,
         reason="server demands STARTTLS first"),
    Rule(_BOTH, "530", outcome=Outcome.REFUSED, reason="authentication required"),
    Rule(_BOTH, "5", enhanced="5.7.0", text=r"auth", outcome=Outcome.REFUSED,
         reason="authentication required"),
    Rule(_ONLY_RCPT, "5", enhanced="5.1.10", outcome=Outcome.INCONCLUSIVE,
         reason="recipient domain has a null MX"),
    Rule(_ONLY_RCPT, "556", outcome=Outcome.INCONCLUSIVE,
         reason="recipient domain has a null MX"),
    Rule(_ONLY_RCPT, "5", enhanced="5.1.2", outcome=Outcome.INCONCLUSIVE,
         reason="recipient domain unknown"),
    Rule(_BOTH, "5", enhanced="5.1.8", outcome=Outcome.INCONCLUSIVE,
         reason="sender domain unknown"),
    Rule(_ONLY_MAIL, "5", enhanced="5.7.27", outcome=Outcome.INCONCLUSIVE,
         reason="sender domain has a null MX"),
    Rule(_BOTH, "5", enhanced="5.4.", outcome=Outcome.INCONCLUSIVE,
         reason="routing or network problem"),
    Rule(_BOTH, "5", text=_CLIENT_BLOCKED, outcome=Outcome.INCONCLUSIVE,
         reason="the checking client itself is blocked; relay policy not reached"),
    Rule(_BOTH, "5", text=r"helo command rejected", outcome=Outcome.INCONCLUSIVE,
         reason="HELO name refused; relay policy not reached (see --helo)"),
    # Exim's "require verify = sender" answers at RCPT, naming the *sender*: before
    # "Unrouteable address" reads as a recipient domain problem.
    Rule(_BOTH, "5", text=r"sender verify failed", outcome=Outcome.INCONCLUSIVE,
         reason="sender verification failed; relay policy not reached (see --from)"),
    Rule(_BOTH, "5", enhanced="5.1.3", outcome=Outcome.REFUSED,
         reason="address syntax refused"),
    Rule(_BOTH, "5", enhanced="5.1.7", outcome=Outcome.REFUSED,
         reason="address syntax refused"),
    Rule(_BOTH, "5", enhanced="5.5.", outcome=Outcome.REFUSED,
         reason="address form refused (syntax)"),
    Rule(_BOTH, "5", enhanced="5.7.", outcome=Outcome.REFUSED, reason="refused by policy"),
    Rule(_ONLY_RCPT, "5", text=_DOMAIN_UNKNOWN, outcome=Outcome.INCONCLUSIVE,
         reason="recipient domain unknown"),
    Rule(_ONLY_MAIL, "5", text=_DOMAIN_UNKNOWN, outcome=Outcome.INCONCLUSIVE,
         reason="sender domain unknown"),
    Rule(_BOTH, "5", text=_RELAY_DENIED, outcome=Outcome.REFUSED, reason="relaying denied"),
    Rule(_BOTH, "5", text=r"restricted characters", outcome=Outcome.REFUSED,
         reason="address form refused"),
    Rule(_BOTH, "553", outcome=Outcome.REFUSED, reason="mailbox name not allowed"),
    Rule(_BOTH, "500", outcome=Outcome.REFUSED, reason="address form refused (syntax)"),
    Rule(_BOTH, "501", outcome=Outcome.REFUSED, reason="address form refused (syntax)"),
    Rule(_BOTH, "50", outcome=Outcome.INCONCLUSIVE, reason="command not usable here"),
    Rule(_BOTH, "555", outcome=Outcome.REFUSED, reason="address form refused (syntax)"),
    Rule(_ONLY_RCPT, "5", enhanced="5.1.1", outcome=Outcome.REFUSED,
         reason="mailbox unknown (taken as local)"),
    Rule(_BOTH, "5", outcome=Outcome.REFUSED, reason="permanently refused"),
)

_UNEXPECTED = Rule(_BOTH, "", outcome=Outcome.INCONCLUSIVE, reason="unexpected reply")


def rule_for(stage: str, reply: Reply) -> Rule:
    return next((rule for rule in RULES if rule.matches(stage, reply)), _UNEXPECTED)


def classify(stage: str, reply: Reply) -> tuple[Outcome, str]:
    rule = rule_for(stage, reply)
    return rule.outcome, rule.reason


@dataclass(frozen=True)
class Judgement:
    outcome: Outcome
    reason: str
    reached_rcpt: bool


def judge(mail: Reply | None, rcpt: Reply | None) -> Judgement:
    """The outcome of one MAIL/RCPT attempt.  A sender refused at MAIL closes that road."""
    if mail is None:
        return Judgement(Outcome.UNTESTED, "no reply to MAIL FROM", False)
    outcome, reason = classify(MAIL, mail)
    if outcome is not Outcome.ACCEPTED:
        return Judgement(outcome, f"MAIL FROM {reason}", False)
    if rcpt is None:
        return Judgement(Outcome.UNTESTED, "no reply to RCPT TO", False)
    outcome, reason = classify(RCPT, rcpt)
    return Judgement(outcome, reason, True)
