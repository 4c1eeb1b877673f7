"""The plugin as Icinga and an admin run it, against small SMTP servers on loopback."""

from __future__ import annotations

import re

import pytest
from conftest import OUTSIDE, run_plugin
from fakesmtp import Behaviour, FakeSMTP, accept_if, open_relay

from plugin.battery import TEST_IDS

TOTAL = len(TEST_IDS)


def check(server: FakeSMTP, *extra: str):
    return run_plugin("-H", "127.0.0.1", "-p", str(server.port), "--to", OUTSIDE,
                      "-t", "15", *extra)


def accepted_ids(status_line: str) -> set[str]:
    match = re.search(r"relayed \d+ of \d+ attempts \(([^)]*)\)", status_line)
    return set(match.group(1).split(", ")) if match else set()


def test_closed_server_is_ok_with_perfdata():
    with FakeSMTP() as server:
        result = check(server)
    assert result.returncode == 0, result.stdout
    assert result.status_line == f"OPEN_RELAY OK - 127.0.0.1 refused all {TOTAL} relay attempts"
    assert result.perfdata["accepted"] == f"0;;;0;{TOTAL}"
    assert result.perfdata["refused"] == f"{TOTAL};;;0;{TOTAL}"
    assert result.perfdata["inconclusive"] == result.perfdata["tempfail"] == f"0;;;0;{TOTAL}"
    assert re.fullmatch(r"[0-9.]+s;;;0", result.perfdata["time"])
    assert result.stderr == ""


def test_open_server_is_critical_with_the_dialogue_as_evidence():
    with FakeSMTP(Behaviour(rcpt=open_relay)) as server:
        result = check(server)
    assert result.returncode == 2
    assert result.status_line.startswith(
        f"OPEN_RELAY CRITICAL - 127.0.0.1 relayed {TOTAL} of {TOTAL} attempts (plain, ")
    assert result.perf_value("accepted") == TOTAL
    evidence = result.long_output
    assert "banner: 220 mx.fake.test ESMTP fake" in evidence
    assert (f"  plain (plain third party: outside sender to outside recipient):\n"
            f"    C: MAIL FROM:<{OUTSIDE}>\n"
            f"    S: 250 2.1.0 Ok\n"
            f"    C: RCPT TO:<{OUTSIDE}>\n"
            f"    S: 250 2.1.5 Ok\n") in evidence + "\n"
    # Past the first few, every accepted attempt still gets its command and reply.
    assert "  abuse: C: RCPT TO:<abuse@relay.example.net> S: 250 2.1.5 Ok" in evidence
    assert len(result.stdout.encode()) < 8192


LEAKS = {
    "percent-hack-literal": r'^<[^"]*%[^@]*@\[',
    "bang-path": r"^<[^@]*![^@]*>$",
    "source-route-literal": r"^<@\[",
    "quoted-at": r'^<"[^"]*@[^"]*">$',
    "null-sender": "sender:^<>$",
    "spoof-domain": r"sender:^<[^@]+@fake\.test>$",
    "unbracketed": r"^[^<]",
}


@pytest.mark.parametrize("leak", LEAKS)
def test_server_leaking_through_one_form_is_critical_naming_exactly_it(leak):
    with FakeSMTP(Behaviour(rcpt=accept_if(LEAKS[leak]))) as server:
        result = check(server)
    assert result.returncode == 2, result.stdout
    assert accepted_ids(result.status_line) == {leak}
    assert f"relayed 1 of {TOTAL} attempts" in result.status_line
    assert f"  {leak} (" in result.long_output


def test_greylisting_is_a_warning_never_ok():
    greylist = Behaviour(rcpt=lambda s, r: "450 4.2.0 <x>: Recipient address rejected: "
                                           "Greylisted, see http://postgrey.example/")
    with FakeSMTP(greylist) as server:
        result = check(server)
    assert result.returncode == 1, result.stdout
    assert result.status_line.startswith(
        f"OPEN_RELAY WARNING - 127.0.0.1 no relay accepted, but {TOTAL} of {TOTAL} attempts "
        "undecided (greylisted)")
    assert result.perf_value("tempfail") == TOTAL
    assert ("Undecided attempts:\n  greylisted: 450 4.2.0 <x>: Recipient address rejected: "
            "Greylisted, see http://postgrey.example/: plain, null-sender, ") in result.long_output


def test_unknown_recipient_domain_is_inconclusive_not_ok():
    unknown = Behaviour(rcpt=lambda s, r: "550 5.1.2 <x>: Recipient address rejected: "
                                          "Domain not found")
    with FakeSMTP(unknown) as server:
        result = check(server)
    assert result.returncode == 1
    assert "undecided (recipient domain unknown)" in result.status_line
    assert result.perf_value("inconclusive") == TOTAL


def test_every_mail_refused_means_relay_policy_never_reached():
    blocked = Behaviour(mail=lambda s: "554 5.7.1 Access denied")
    with FakeSMTP(blocked) as server:
        result = check(server)
    assert result.returncode == 1
    assert "relay policy never reached: every MAIL FROM refused" in result.status_line


def test_server_dropping_the_connection_after_two_tests_gets_the_full_battery():
    with FakeSMTP(Behaviour(drop_after_rcpts=2)) as server:
        result = check(server, "-v")
        connections = server.connections
    assert result.returncode == 0, result.stdout
    assert result.perf_value("refused") == TOTAL
    assert result.perf_value("untested") == 0
    assert connections >= TOTAL // 2


def test_no_data_ever_and_every_transaction_reset_and_quit():
    with FakeSMTP(Behaviour(rcpt=open_relay, ehlo=["mx.fake.test"])) as server:
        result = check(server)
        sessions = [server.verbs(session) for session in server.sessions]
    assert result.returncode == 2
    assert sum(verbs.count("MAIL") for verbs in sessions) == TOTAL
    for verbs in sessions:
        assert "DATA" not in verbs
        assert verbs.count("MAIL") == verbs.count("RSET")
        assert verbs[0] == "EHLO" and verbs[-1] == "QUIT"
        # Without PIPELINING, one command at a time: MAIL, RCPT, RSET.
        assert verbs[1:-1] == ["MAIL", "RCPT", "RSET"] * verbs.count("MAIL")


def test_ehlo_refused_falls_back_to_helo():
    with FakeSMTP(Behaviour(ehlo=None)) as server:
        result = check(server)
        sessions = [server.verbs(session) for session in server.sessions]
    assert result.returncode == 0
    assert all(verbs[:2] == ["EHLO", "HELO"] for verbs in sessions)


def test_verbose_levels_add_per_test_lines_and_transcripts():
    with FakeSMTP() as server:
        v1 = check(server, "-v")
        v3 = check(server, "-vvv")
    assert "All attempts:" in v1.long_output
    assert re.search(r"^  percent-hack-host +refused +554 5\.7\.1 Relay access denied$",
                     v1.long_output, re.M)
    assert "Connection 1 to 127.0.0.1:" in v3.long_output
    assert re.search(r"^  \[ *\d+\.\d{3}\] C: EHLO ", v3.long_output, re.M)
    assert v3.stdout.splitlines()[-1].startswith("| ")


def test_server_text_cannot_inject_pipes_or_control_characters():
    evil = Behaviour(rcpt=lambda s, r: "250 ok | fake=1 \x1b[31m\x07")
    with FakeSMTP(evil) as server:
        result = check(server, "--tests", "plain")
    assert result.returncode == 2
    body = result.stdout.rsplit("\n| ", 1)[0]
    assert "|" not in body and "\x1b" not in body and "\x07" not in body
    assert "fake" not in result.perfdata


def test_connection_refused_is_unknown():
    with FakeSMTP() as server:
        port = server.port
    result = run_plugin("-H", "127.0.0.1", "-p", str(port), "--to", OUTSIDE, "-t", "5")
    assert result.returncode == 3
    assert result.status_line.startswith("OPEN_RELAY UNKNOWN - connect: ")


def test_silent_server_is_unknown_within_the_deadline_naming_the_step():
    import socket
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    started = time.monotonic()
    with listener:
        result = run_plugin("-H", "127.0.0.1", "-p", str(listener.getsockname()[1]),
                            "--to", OUTSIDE, "-t", "2")
    took = time.monotonic() - started
    assert result.returncode == 3
    assert "no banner from 127.0.0.1 within 2 s" in result.status_line
    assert took < 2 + 1.5


def test_empty_test_list_is_a_usage_error():
    result = run_plugin("-H", "127.0.0.1", "--to", OUTSIDE, "--tests", " , ")
    assert result.returncode == 3
    assert result.stdout == "OPEN_RELAY UNKNOWN - --tests names no test (give test ids or 'all')\n"


@pytest.mark.parametrize(("args", "message"), [
    (("--foreign-literal", "::1%> NOTIFY=SUCCESS"), "--foreign-literal '::1%> NOTIFY=SUCCESS' "
                                                    "is not an IP address"),
    (("-H", "::1%lo"), "--hostname '::1%lo' is neither a host name nor an address"),
    (("--from", "x" * 65 + "@relay.example.net"), "--from is longer than RFC 5321 allows"),
])
def test_zone_indexes_and_overlong_addresses_are_usage_errors(args, message):
    base = {"-H": "127.0.0.1", "--to": OUTSIDE}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    result = run_plugin(*[item for pair in base.items() for item in pair])
    assert result.returncode == 3
    assert result.stdout.startswith(f"OPEN_RELAY UNKNOWN - {message}")
    assert len(result.stdout.splitlines()) == 1


def test_time_thresholds_warn_and_go_into_perfdata():
    # "~:0" is violated by any positive time: the threshold path without a slow server.
    with FakeSMTP() as server:
        warn = check(server, "-w", "~:0", "-c", "100")
        crit = check(server, "-c", "~:0")
    assert warn.returncode == 1, warn.stdout
    assert re.fullmatch(r"OPEN_RELAY WARNING - 127\.0\.0\.1 refused all 26 relay attempts; "
                        r"slow: [0-9.]+ s \(outside range ~:0\)", warn.status_line)
    assert re.fullmatch(r"[0-9.]+s;~:0;100;0", warn.perfdata["time"])
    assert crit.returncode == 2
    assert "slow:" in crit.status_line


def test_an_accepted_relay_stays_critical_whatever_the_time():
    with FakeSMTP(Behaviour(rcpt=open_relay)) as server:
        result = check(server, "-w", "~:0")
    assert result.returncode == 2
    assert "relayed 26 of 26 attempts" in result.status_line
