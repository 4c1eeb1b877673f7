"""The plugin's verdicts against real mail servers from Debian packages.

Postfix, Exim and OpenSMTPD, each configured open or closed in one way an
administrator really does it (tests/mta.py starts them on 127.0.1.x).  Every test
asserts the exit code and the exact set of test ids the server accepted: the sets
below are what these servers did, each explained where it is not obvious.

"Closed" servers trust 127.0.1.254 only, so the plugin (connecting from 127.0.0.1)
is an outsider.  "Open" ones trust the plugin's own address, which is what an
open relay is: a server that trusts a client it should not.
"""

from __future__ import annotations

import re
import smtplib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import OUTSIDE, PluginRun, run_plugin
from mta import (
    MailSink,
    NxDomainResolver,
    Server,
    client_address,
    exim,
    opensmtpd,
    outcomes,
    postfix,
    postfix_errors_per_connection,
    require_root,
    untrusted_network,
    with_outcome,
)

from plugin.battery import TEST_IDS

ALL = frozenset(TEST_IDS)
TOTAL = len(TEST_IDS)
HELO = "probe.test.example"
PLUGIN_SECONDS = 20        # the plugin's own deadline (-t)
PROCESS_SECONDS = 40       # and ours for its process, should -t fail

# Postfix's stock error limits (postconf -d), which the closed fixture keeps.
SOFT_ERROR_LIMIT = 10
ERROR_SLEEP_SECONDS = 1.0

@pytest.fixture(scope="module")
def sink() -> Iterator[MailSink]:
    """The only place relayed mail may go, and the only DNS the servers can ask."""
    require_root()
    with MailSink() as mail_sink, NxDomainResolver():
        yield mail_sink


@dataclass
class Check:
    run: PluginRun
    seconds: float
    server: Server

    @property
    def outcomes(self) -> dict[str, str]:
        return outcomes(self.run.stdout)

    def ids(self, outcome: str) -> set[str]:
        return with_outcome(self.run.stdout, outcome)

    @property
    def evidence(self) -> str:
        """What to read when an assertion fails: the plugin's words and the server's log."""
        return (f"{self.run.stdout}{self.run.stderr}\n--- {self.server.kind} log (tail):\n"
                f"{self.server.log_tail()}")


def check(server: Server, sink: MailSink, *extra: str) -> Check:
    """Runs the full battery against `server` as Icinga would, with -vv for the details."""
    before = len(sink.messages)
    start = time.monotonic()
    run = run_plugin("-H", server.address, "-p", str(server.port), "--to", OUTSIDE,
                     "--helo", HELO, "-t", str(PLUGIN_SECONDS), "-vv", *extra,
                     timeout=PROCESS_SECONDS)
    result = Check(run, time.monotonic() - start, server)
    # Shown with -s or -rP: the measured wall time of each configuration.
    print(f"{server.kind} {server.address}: exit {run.returncode} in "
          f"{result.seconds:.2f} s: {run.status_line}")
    assert set(result.outcomes) == ALL, result.evidence
    # The plugin stops at RCPT TO: not even an open relay may have sent anything.
    assert len(sink.messages) == before, result.evidence
    return result


def assert_critical(result: Check, accepted: set[str] | frozenset[str]) -> None:
    assert result.run.returncode == 2, result.evidence
    assert result.ids("accepted") == set(accepted), result.evidence
    assert f"relayed {len(accepted)} of {TOTAL} attempts" in result.run.status_line


def assert_ok(result: Check) -> None:
    assert result.run.returncode == 0, result.evidence
    assert result.ids("refused") == ALL, result.evidence
    assert f"refused all {TOTAL} relay attempts" in result.run.status_line


# --- Postfix ---------------------------------------------------------------------------


def test_postfix_stock_closed_is_ok_within_its_error_limits(sink: MailSink) -> None:
    # Debian's stock relay restrictions end in defer_unauth_destination: the refusal
    # is "454 4.7.1 Relay access denied", which must count as refused, not tempfail.
    with postfix("127.0.1.21", "mx.closed.example",
                 mynetworks=untrusted_network("127.0.1.21")) as server:
        result = check(server, sink, "--target-domain", "closed.example")
        errors = postfix_errors_per_connection(server)
    assert_ok(result)
    # Every attempt costs Postfix one error (the 454); the plugin spreads them over
    # connections so that none reaches the soft limit, past which Postfix sleeps a
    # second before every reply.  (bench/run measures the time: 0.17 s, 4 connections.)
    assert errors, result.evidence
    assert max(errors) < SOFT_ERROR_LIMIT, errors
    assert sum(errors) >= TOTAL, errors
    # The plugin's own count of connections covers every one Postfix logged (a lane
    # that finds the queue empty may open one more that sends no MAIL).
    made = int(re.search(r"; (\d+) connections$", result.run.stdout, re.M).group(1))
    assert len(errors) <= made, (errors, made)


def test_postfix_really_slows_down_a_client_past_its_soft_error_limit(
        sink: MailSink) -> None:
    # Why the plugin reconnects: the same refusals on one connection get slow.
    with postfix("127.0.1.21", "mx.closed.example",
                 mynetworks=untrusted_network("127.0.1.21")) as server, \
            smtplib.SMTP(server.address, server.port, local_hostname=HELO,
                         timeout=10) as client:
        client.ehlo()
        assert client.mail(OUTSIDE)[0] == 250
        delays = []
        for _ in range(SOFT_ERROR_LIMIT + 2):
            start = time.monotonic()
            code, _ = client.rcpt(OUTSIDE)
            delays.append(time.monotonic() - start)
            assert code == 454
    assert max(delays[:SOFT_ERROR_LIMIT]) < ERROR_SLEEP_SECONDS / 2, delays
    assert min(delays[SOFT_ERROR_LIMIT:]) >= ERROR_SLEEP_SECONDS * 0.9, delays


def test_postfix_trusting_the_client_relays_every_form(sink: MailSink) -> None:
    # permit_mynetworks comes first, so a trusted client may send anything anywhere,
    # whatever the address looks like: Postfix rewrites %, !, source routes and the
    # empty domain itself and accepts them all, unbracketed and literal ones too.
    client = client_address("127.0.1.22")
    with postfix("127.0.1.22", "mx.open.example", mynetworks=f"{client}/32") as server:
        result = check(server, sink, "--target-domain", "open.example")
    assert_critical(result, ALL)


def test_postfix_relaying_for_a_spoofed_local_sender(sink: MailSink) -> None:
    # A sender whitelist in the relay restrictions: "our own domain may relay".
    # parent_domain_matches_subdomains (stock) lets sender.example match the host
    # name too, and Postfix appends $myorigin (= the host name) to the unqualified
    # sender, so three spoofs get through; the address literal and localhost do not.
    with postfix("127.0.1.23", "mx.sender.example",
                 mynetworks=untrusted_network("127.0.1.23"),
                 smtpd_relay_restrictions="permit_mynetworks, check_sender_access "
                 "inline:{ sender.example=OK }, reject_unauth_destination") as server:
        result = check(server, sink, "--target-domain", "sender.example")
    assert_critical(result, {"spoof-host", "spoof-domain", "spoof-unqualified"})


BACKUP_MX = {"mydestination": "localhost", "relay_domains": "backup.example"}


def test_postfix_backup_mx_with_untrusted_routing_relays_routed_forms(
        sink: MailSink) -> None:
    # A dedicated backup MX for backup.example; its own name mx2.backup.example is in
    # that relay domain (parent_domain_matches_subdomains).  allow_untrusted_routing
    # = yes lets anyone route through it an address that names another domain in its
    # local part: the percent hack, the double @ (also quoted) and the bang path, all
    # "@mx2.backup.example".  Not the source route: Postfix strips "@mx2...:" and
    # judges relaytest@relay.example.net, which is refused.  Not the literal forms:
    # [127.0.1.24] is Postfix's own address, a local destination, where the percent
    # hack and bang path are rewritten and what is left names relay.example.net.
    with postfix("127.0.1.24", "mx2.backup.example",
                 mynetworks=untrusted_network("127.0.1.24"), allow_untrusted_routing="yes",
                 **BACKUP_MX) as server:
        result = check(server, sink, "--target-domain", "backup.example")
    assert_critical(result, {"percent-hack-host", "quoted-at-host", "double-at-host",
                             "bang-path-host"})


def test_postfix_backup_mx_with_default_routing_is_ok(sink: MailSink) -> None:
    # The same backup MX with the default allow_untrusted_routing = no: the leak above
    # is that one setting.
    with postfix("127.0.1.26", "mx2.backup.example",
                 mynetworks=untrusted_network("127.0.1.26"), **BACKUP_MX) as server:
        result = check(server, sink, "--target-domain", "backup.example")
    assert_ok(result)


# The pre-2.10 style: everything in smtpd_recipient_restrictions, the domain check
# before the relay check.  relay.example.net does not resolve here (no DNS at all).
UNKNOWN_DOMAIN_FIRST = {
    "smtpd_relay_restrictions": "",
    "smtpd_recipient_restrictions":
        "reject_unknown_recipient_domain, permit_mynetworks, reject_unauth_destination",
}


def test_postfix_unknown_recipient_domain_hides_the_relay_policy(sink: MailSink) -> None:
    # "450 4.1.2 Domain not found" says nothing about relaying: a spammer's domain
    # resolves.  So no OK: WARNING.  Only the foreign address literal, which has no
    # domain to look up, reaches the relay check, and is refused there.
    with postfix("127.0.1.25", "mx.unknown.example",
                 mynetworks=untrusted_network("127.0.1.25"),
                 **UNKNOWN_DOMAIN_FIRST) as server:
        result = check(server, sink, "--target-domain", "unknown.example")
    assert result.run.returncode == 1, result.evidence
    assert result.ids("tempfail") == ALL - {"foreign-literal"}, result.evidence
    assert result.ids("refused") == {"foreign-literal"}, result.evidence
    assert result.run.status_line.startswith("OPEN_RELAY WARNING"), result.evidence


def test_postfix_unknown_recipient_domain_over_an_open_relay(sink: MailSink) -> None:
    # The same restrictions on a server that trusts the client: still 450 for every
    # domain that does not resolve, but the address literal gets through, and that
    # one accepted attempt is proof enough.
    client = client_address("127.0.1.27")
    with postfix("127.0.1.27", "mx.unknown.example", mynetworks=f"{client}/32",
                 **UNKNOWN_DOMAIN_FIRST) as server:
        result = check(server, sink, "--target-domain", "unknown.example")
    assert_critical(result, {"foreign-literal"})


# --- Exim ------------------------------------------------------------------------------


def test_exim_default_acl_closed_is_ok(sink: MailSink) -> None:
    with exim("127.0.1.31", "mx.exim-closed.example",
              relay_from_hosts=untrusted_network("127.0.1.31")) as server:
        result = check(server, sink, "--target-domain", "exim-closed.example")
    assert_ok(result)


# The ACL accepts relay_from_hosts before "relay not permitted", but after its
# address-form checks: "Restricted characters" (%, !, @ in local parts), no domain
# literals (allow_domain_literals is false), no quoted or empty domains.  Exim strips
# the source route via a host name.  What is left is the plain third party with any
# sender but an unqualified or literal one.
EXIM_OPEN_ACCEPTED = frozenset({"plain", "null-sender", "spoof-host", "spoof-domain",
                                "spoof-localhost", "source-route-host", "unbracketed",
                                "postmaster", "abuse"})


@pytest.fixture(scope="module")
def exim_open(sink: MailSink) -> Check:
    client = client_address("127.0.1.32")
    with exim("127.0.1.32", "mx.exim-open.example", relay_from_hosts=client) as server:
        return check(server, sink, "--target-domain", "exim-open.example")


def test_exim_relay_from_hosts_containing_the_client_is_critical(exim_open: Check) -> None:
    assert exim_open.run.returncode == 2, exim_open.evidence
    accepted = exim_open.ids("accepted")
    assert {"plain", "null-sender"} <= accepted <= EXIM_OPEN_ACCEPTED, exim_open.evidence


# Exim answers the 11th RSET on a connection "554 Too many nonmail commands"
# (smtp_accept_max_nonmail = 10 counts RSET) and hangs up: the plugin retries that
# test on a fresh connection and goes on.
def test_exim_open_relay_is_found_in_every_form_it_accepts(exim_open: Check) -> None:
    assert_critical(exim_open, EXIM_OPEN_ACCEPTED)
    assert not exim_open.ids("untested"), exim_open.evidence


def test_exim_sender_verification_is_not_a_relay_verdict(sink: MailSink) -> None:
    # Only postmaster and abuse exist locally, and the ACL verifies the sender before
    # deciding about relaying: relaytest@<own domain> is "Sender verify failed", which
    # proves nothing about relaying (a spammer would spoof an existing mailbox).
    untrusted = untrusted_network("127.0.1.33")
    with exim("127.0.1.33", "mx.exim-strict.example", relay_from_hosts=untrusted,
              local_parts="postmaster : abuse") as server:
        result = check(server, sink, "--target-domain", "exim-strict.example")
        spoofing_postmaster = check(server, sink, "--target-domain", "exim-strict.example",
                                    "--from", "postmaster@relay.example.net")
    assert result.run.returncode == 1, result.evidence
    assert result.ids("inconclusive") == {"spoof-host", "spoof-domain",
                                          "spoof-localhost"}, result.evidence
    assert "sender verification failed" in result.run.status_line
    # Spoofing a mailbox that exists everywhere reaches the relay decision.
    assert_ok(spoofing_postmaster)


# --- OpenSMTPD -------------------------------------------------------------------------

SMTPD_LOCAL = 'match from any for domain "{domain}" action "local"'


def test_opensmtpd_relaying_for_a_network_the_client_is_not_in_is_ok(
        sink: MailSink) -> None:
    # Debian's smtpd.conf relays "from local", which is every loopback address, the
    # plugin's included: a LAN-style network stands for it here.
    rules = "\n".join([SMTPD_LOCAL.format(domain="smtpd-closed.example"),
                       f'match from src {untrusted_network("127.0.1.41")} for any '
                       'action "outbound"'])
    with opensmtpd("127.0.1.41", "mx.smtpd-closed.example", rules) as server:
        result = check(server, sink, "--target-domain", "smtpd-closed.example")
    assert_ok(result)


def test_opensmtpd_match_from_any_for_any_is_critical(sink: MailSink) -> None:
    # OpenSMTPD's parser refuses quoted local parts, a second @ and addresses without
    # brackets (501 5.1.3); it relays every other form as it stands, % and ! included.
    rules = "\n".join([SMTPD_LOCAL.format(domain="smtpd-open.example"),
                       'match from any for any action "outbound"'])
    with opensmtpd("127.0.1.42", "mx.smtpd-open.example", rules) as server:
        result = check(server, sink, "--target-domain", "smtpd-open.example")
    refused = {"quoted-at", "quoted-percent", "quoted-at-host", "quoted-at-literal",
               "double-at-host", "double-at-literal", "double-at-empty", "unbracketed"}
    assert_critical(result, ALL - refused)


# --- the fixtures themselves -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["postfix", "exim", "opensmtpd"])
def test_relayed_mail_goes_to_the_sink_and_nowhere_else(sink: MailSink, kind: str) -> None:
    """An open fixture really relays, and what it relays lands in the sink."""
    address = {"postfix": "127.0.1.28", "exim": "127.0.1.34", "opensmtpd": "127.0.1.43"}[kind]
    client = client_address(address)
    servers = {
        "postfix": lambda: postfix(address, "mx.open.example", mynetworks=f"{client}/32"),
        "exim": lambda: exim(address, "mx.exim-open.example", relay_from_hosts=client),
        "opensmtpd": lambda: opensmtpd(address, "mx.smtpd-open.example",
                                       'match from any for any action "outbound"'),
    }
    marker = f"sink-check-{kind}-{time.monotonic_ns()}"
    with servers[kind]() as server:
        before = len(sink.messages)
        with smtplib.SMTP(server.address, server.port, local_hostname=HELO,
                          timeout=10) as client_session:
            client_session.sendmail(OUTSIDE, [OUTSIDE],
                                    f"Subject: {marker}\r\n\r\nrelay fixture check\r\n")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(
                marker.encode() in message for message in sink.messages[before:]):
            time.sleep(0.1)
        log = server.log_tail()
    assert any(marker.encode() in message for message in sink.messages[before:]), log
    # And each server's log says it delivered there, by the route the fixture set.
    delivered = {
        "postfix": r"relay=127\.0\.1\.2\[127\.0\.1\.2\]:2525,.* status=sent",
        "exim": r"=> relaytest@relay\.example\.net R=outside T=sink H=127\.0\.1\.2 ",
        "opensmtpd": r'mta delivery .* relay="127\.0\.1\.2 \(127\.0\.1\.2\)" .*result="Ok"',
    }
    assert re.search(delivered[kind], log), log
