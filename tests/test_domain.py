"""Domain checks (-D): every MX host, every address, in parallel, against a local DNS."""

from __future__ import annotations

import os

import pytest
from conftest import OUTSIDE, run_plugin
from fakedns import FakeDNS
from fakesmtp import Behaviour, FakeSMTP, accept_if, open_relay

from plugin.battery import TEST_IDS

TOTAL = len(TEST_IDS)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="SMTP servers must listen on port 25 of 127.0.4.x (needs root)")

ZONE = {
    "two-mx.test": {"MX": ["10 mx1.two-mx.test.", "20 mx2.two-mx.test."]},
    "mx1.two-mx.test": {"A": ["127.0.4.11"]},
    "mx2.two-mx.test": {"A": ["127.0.4.12"]},
    "implicit.test": {"A": ["127.0.4.21"]},
    "nullmx.test": {"MX": ["0 ."]},
    "broken-mx.test": {"MX": ["10 mx1.broken-mx.test.", "20 ghost.broken-mx.test."]},
    "mx1.broken-mx.test": {"A": ["127.0.4.31"]},
    "ghost.broken-mx.test": {"TXT": ['"no address here"']},
    "servfail.test": "SERVFAIL",
    "dual.test": {"MX": ["10 mx.dual.test."]},
    "mx.dual.test": {"A": ["127.0.4.41"], "AAAA": ["::1"]},
}


@pytest.fixture(scope="module")
def dns_server():
    with FakeDNS(ZONE) as server:
        yield server


def domain_check(dns_server: FakeDNS, *args: str):
    return run_plugin("--resolver", dns_server.address, "--to", OUTSIDE, "-t", "15", *args)


def closed(banner_host: str) -> Behaviour:
    return Behaviour(banner=f"220 {banner_host} ESMTP")


def test_backup_mx_leaking_one_form_is_named_first_and_the_primary_still_tested(dns_server):
    leaky = Behaviour(banner="220 mx2.two-mx.test ESMTP",
                      rcpt=accept_if(r"%relay\.example\.net@mx2\.two-mx\.test>$"))
    with FakeSMTP(closed("mx1.two-mx.test"), "127.0.4.11", 25), \
            FakeSMTP(leaky, "127.0.4.12", 25):
        result = domain_check(dns_server, "-D", "two-mx.test")
    assert result.returncode == 2, result.stdout
    assert result.status_line == (
        "OPEN_RELAY CRITICAL - two-mx.test: mx2.two-mx.test [127.0.4.12] relayed 1 of "
        f"{TOTAL} attempts (percent-hack-host); mx1.two-mx.test [127.0.4.11] OK")
    assert result.perfdata["mx2.two-mx.test_accepted"] == f"1;;;0;{TOTAL}"
    assert result.perfdata["mx1.two-mx.test_accepted"] == f"0;;;0;{TOTAL}"
    assert result.perf_value("accepted") == 1
    assert result.perf_value("refused") == 2 * TOTAL - 1
    # The evidence is grouped under the host that leaked.
    long = result.long_output
    assert long.index("[CRITICAL] mx2.two-mx.test [127.0.4.12] relayed") < long.index(
        "C: RCPT TO:<relaytest%relay.example.net@mx2.two-mx.test>")


def test_domain_is_the_target_domain_for_spoofed_senders(dns_server):
    spoofable = Behaviour(banner="220 mx1.two-mx.test ESMTP",
                          rcpt=accept_if(r"sender:^<relaytest@two-mx\.test>$"))
    with FakeSMTP(spoofable, "127.0.4.11", 25), FakeSMTP(closed("mx2"), "127.0.4.12", 25):
        result = domain_check(dns_server, "-D", "two-mx.test")
    assert result.returncode == 2
    assert "mx1.two-mx.test [127.0.4.11] relayed 1 of 26 attempts (spoof-domain)" in \
        result.status_line


def test_domain_without_mx_is_its_own_mail_host(dns_server):
    with FakeSMTP(closed("implicit.test"), "127.0.4.21", 25):
        result = domain_check(dns_server, "-D", "implicit.test")
    assert result.returncode == 0, result.stdout
    assert result.status_line.startswith(
        f"OPEN_RELAY OK - implicit.test: implicit.test [127.0.4.21] refused all {TOTAL}")
    assert "implicit.test_accepted" in result.perfdata


def test_null_mx_means_nothing_to_test(dns_server):
    result = domain_check(dns_server, "-D", "nullmx.test")
    assert result.returncode == 0
    assert result.status_line.startswith(
        "OPEN_RELAY OK - nullmx.test: nullmx.test publishes a null MX: it accepts no mail")


def test_nxdomain_is_unknown_naming_the_domain(dns_server):
    result = domain_check(dns_server, "-D", "nowhere.test")
    assert result.returncode == 3
    assert result.status_line == (
        "OPEN_RELAY UNKNOWN - nowhere.test: no such domain (NXDOMAIN)")


def test_servfail_is_unknown_naming_the_domain(dns_server):
    result = domain_check(dns_server, "-D", "servfail.test")
    assert result.returncode == 3
    assert "servfail.test: DNS failure looking up MX (SERVFAIL)" in result.status_line


def test_mx_host_without_address_warns_and_the_others_are_still_tested(dns_server):
    with FakeSMTP(closed("mx1.broken-mx.test"), "127.0.4.31", 25):
        result = domain_check(dns_server, "-D", "broken-mx.test")
    assert result.returncode == 1, result.stdout
    assert result.status_line == (
        "OPEN_RELAY WARNING - broken-mx.test: MX host ghost.broken-mx.test of broken-mx.test "
        "has no address; mx1.broken-mx.test [127.0.4.31] OK")
    assert result.perf_value("refused") == TOTAL


def test_ipv4_and_ipv6_of_one_host_are_two_targets(dns_server):
    with FakeSMTP(closed("mx.dual.test"), "127.0.4.41", 25), \
            FakeSMTP(Behaviour(banner="220 mx.dual.test", rcpt=open_relay), "::1", 25):
        both = domain_check(dns_server, "-D", "dual.test")
        only4 = domain_check(dns_server, "-D", "dual.test", "-4")
        host6 = domain_check(dns_server, "-H", "mx.dual.test", "-6",
                             "--tests", "plain,source-route-literal", "-vvv")
    assert both.returncode == 2, both.stdout
    assert both.status_line.startswith(
        f"OPEN_RELAY CRITICAL - dual.test: mx.dual.test [::1] relayed {TOTAL} of {TOTAL}")
    assert both.status_line.endswith("; mx.dual.test [127.0.4.41] OK")
    assert both.perfdata["mx.dual.test___1_accepted"] == f"{TOTAL};;;0;{TOTAL}"
    assert both.perfdata["mx.dual.test_127.0.4.41_accepted"] == f"0;;;0;{TOTAL}"
    assert only4.returncode == 0
    assert host6.returncode == 2
    assert "RCPT TO:<@[IPv6:::1]:relaytest@relay.example.net>" in host6.long_output


def test_max_targets_caps_the_addresses_and_says_so(dns_server):
    with FakeSMTP(closed("mx1.two-mx.test"), "127.0.4.11", 25):
        result = domain_check(dns_server, "-D", "two-mx.test", "--max-targets", "1")
    assert result.returncode == 1
    assert "1 more addresses not tested (--max-targets)" in result.status_line


def test_recipient_in_the_checked_domain_is_refused_before_any_query(dns_server):
    before = len(dns_server.queries)
    result = run_plugin("-D", "two-mx.test", "--resolver", dns_server.address,
                        "--to", "someone@two-mx.test")
    assert result.returncode == 3
    assert "in the target's own domain" in result.status_line
    assert len(dns_server.queries) == before
