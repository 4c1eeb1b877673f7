"""Hostile and broken servers: the plugin ends in time, with a true state and one reason.

Each test runs the plugin as a process against a small server from hostile.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from conftest import OUTSIDE, ROOT, PluginRun, plugin_command, run_plugin
from hostile import (
    ACCEPTED,
    EHLO,
    EHLO_NO_PIPELINING,
    HANG_UP,
    RELAY_DENIED,
    RESET,
    SILENCE,
    Answer,
    HostileServer,
    Peer,
    Script,
    assert_sane,
    multiline,
)

from plugin.battery import TEST_IDS
from plugin.runner import FRUITLESS_CONNECTIONS, LANES_PER_TARGET, TESTS_PER_CONNECTION

TOTAL = len(TEST_IDS)
# Connections the plugin opens at once for the whole battery.
LANES = min(LANES_PER_TARGET, -(-TOTAL // TESTS_PER_CONNECTION))
FEW = "plain,null-sender,percent-hack-host"


def check(server: HostileServer, *extra: str, timeout: str = "5") -> PluginRun:
    host = server.host
    result = run_plugin("-H", host, "-p", str(server.port), "--to", OUTSIDE, "-t", timeout,
                        *extra, timeout=30)
    assert_sane(result)
    return result


def timed(server: HostileServer, *extra: str, timeout: str) -> tuple[PluginRun, float]:
    started = time.monotonic()
    result = check(server, *extra, timeout=timeout)
    return result, time.monotonic() - started


def nth(answers: dict[int, str], otherwise: str) -> Callable[[Peer, str], str]:
    """An answer by the number of the command on its connection (1 = first of its verb)."""
    def answer(peer: Peer, line: str) -> str:
        verb = line.split(":", 1)[0].upper()
        count = sum(1 for sent in peer.lines if sent.split(":", 1)[0].upper() == verb)
        return answers.get(count, otherwise)
    return answer


def on_connection(first: Answer, later: Answer) -> Callable[[Peer, str], str]:
    """One answer on the first connection, another on every later one."""
    def answer(peer: Peer, line: str) -> str:
        chosen = first if peer.number == 1 else later
        return chosen(peer, line) if callable(chosen) else chosen
    return answer


def relay_plain(peer: Peer, line: str) -> str:
    """An open relay for the plain test only: outside sender to outside recipient."""
    mails = [sent for sent in peer.lines if sent.upper().startswith("MAIL FROM:")]
    plain = mails and mails[-1] == f"MAIL FROM:<{OUTSIDE}>" and line == f"RCPT TO:<{OUTSIDE}>"
    return ACCEPTED if plain else RELAY_DENIED


# -- tarpits: the deadline holds ---------------------------------------------------------

def test_banner_trickled_past_the_deadline_is_unknown_in_time():
    tarpit = Script(banner="220 mx.tarpit.test ESMTP " + "x" * 40, trickle=0.2)
    with HostileServer(tarpit) as server:
        result, took = timed(server, timeout="1")
    assert result.returncode == 3
    assert result.status_line == "OPEN_RELAY UNKNOWN - no banner from 127.0.0.1 within 1 s"
    assert took < 1 + 1


def test_replies_a_byte_at_a_time_within_the_deadline_still_decide():
    trickler = Script(ehlo=EHLO_NO_PIPELINING, trickle=0.001, rcpt=RELAY_DENIED)
    with HostileServer(trickler) as server:
        result = check(server, "--tests", FEW, timeout="10")
    assert result.returncode == 0, result.stdout
    assert result.status_line == "OPEN_RELAY OK - 127.0.0.1 refused all 3 relay attempts"


@pytest.mark.parametrize(("verb", "step"), [
    ("ehlo", "reply to EHLO"), ("mail", "reply to MAIL FROM"),
    ("rcpt", "reply to RCPT TO"), ("rset", "reply to RSET")])
def test_server_falling_silent_is_unknown_in_time_naming_the_step(verb, step):
    with HostileServer(Script(**{verb: SILENCE})) as server:
        result, took = timed(server, timeout="1")
    assert result.returncode == 3, result.stdout
    assert f"no {step} from 127.0.0.1 within 1 s" in result.status_line
    assert took < 1 + 1


def test_silence_after_an_accepted_relay_is_still_critical_with_its_evidence():
    with HostileServer(Script(rcpt=nth({1: ACCEPTED}, SILENCE))) as server:
        result, took = timed(server, timeout="1")
    assert result.returncode == 2, result.stdout
    # Each connection (up to LANES at once) gets its first relay accepted, then silence.
    accepted = int(result.perf_value("accepted"))
    assert 1 <= accepted <= LANES
    assert result.status_line.startswith(
        f"OPEN_RELAY CRITICAL - 127.0.0.1 relayed {accepted} of {TOTAL} attempts (plain")
    assert f"    C: RCPT TO:<{OUTSIDE}>\n    S: 250 2.1.5 Ok" in result.long_output
    assert result.perf_value("untested") == TOTAL - accepted
    assert took < 1 + 1


def test_silence_at_rset_after_an_accepted_relay_keeps_the_evidence():
    """The RCPT reply is in hand when the RSET goes unanswered: it still counts."""
    with HostileServer(Script(rcpt=ACCEPTED, rset=SILENCE)) as server:
        result = check(server, timeout="1")
    assert result.returncode == 2, result.stdout
    assert 1 <= result.perf_value("accepted") <= LANES


# -- replies that never end: bounded memory ----------------------------------------------

def endless_lines(peer: Peer, line: str) -> str:
    while peer.say("250-" + "A" * 70):
        pass
    return HANG_UP


def endless_line(peer: Peer, line: str) -> str:
    peer.send(b"250-mx.hostile.test ")
    while peer.send(b"A" * 4096):
        pass
    return HANG_UP


# Runs a Python script and reports the high-water mark of its own memory on stderr.
# Not getrusage: a child's ru_maxrss also counts the parent's pages it shared until exec.
_MEASURED = """
import runpy, sys
script = sys.argv.pop(1)
sys.argv[0] = script
try:
    runpy.run_path(script, run_name="__main__")
finally:
    with open("/proc/self/status") as status:
        sys.stderr.write(next(line for line in status if line.startswith("VmHWM:")))
"""


def peak_rss_kib(server: HostileServer) -> tuple[PluginRun, int]:
    """Run the plugin (the script plugin_command names) and measure its peak resident set."""
    command = plugin_command()
    env = dict(os.environ)
    if command[0] == sys.executable:
        env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", _MEASURED, command[-1], "-H", "127.0.0.1", "-p",
         str(server.port), "--to", OUTSIDE, "-t", "5"],
        capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
    *errors, hwm = done.stderr.splitlines()
    result = PluginRun(done.returncode, done.stdout, "\n".join(errors))
    assert_sane(result)
    return result, int(hwm.split()[1])   # VmHWM is in kB


@pytest.mark.parametrize(("reply", "reason"), [
    (endless_lines, "reply longer than 100 lines"),
    (endless_line, "reply line longer than 2048 bytes")])
def test_endless_reply_is_unknown_with_bounded_memory(reply, reason):
    with HostileServer(Script()) as server:
        _, baseline = peak_rss_kib(server)
    with HostileServer(Script(ehlo=reply)) as server:
        started = time.monotonic()
        result, peak = peak_rss_kib(server)
        took = time.monotonic() - started
    assert result.returncode == 3, result.stdout
    assert result.status_line == (
        f"OPEN_RELAY UNKNOWN - not an SMTP server: {reason} (at reply to EHLO)")
    assert took < 5
    # Against a closed server the plugin peaks at some 25 MiB (the interpreter and its
    # libraries); the endless reply must not add to that.
    assert peak - baseline < 4 * 1024, f"peak {peak} KiB, closed server {baseline} KiB"


# -- 421 and hang-ups: reconnect where it helps, keep what was learned -------------------

def test_421_at_the_banner_is_unknown_naming_it():
    with HostileServer(Script(banner="421 4.3.2 mx.hostile.test Service shutting down")) \
            as server:
        result = check(server)
        connections = len(server.peers)
    assert result.returncode == 3
    assert result.status_line == ("OPEN_RELAY UNKNOWN - banner: server closing: "
                                  "421 4.3.2 mx.hostile.test Service shutting down")
    assert connections <= LANES   # the lanes' first connections, no retries


def test_421_mid_dialogue_reconnects_and_finishes_the_battery():
    closing = "421 4.4.2 mx.hostile.test Error: timeout exceeded"
    with HostileServer(Script(rcpt=nth({3: closing}, RELAY_DENIED))) as server:
        result = check(server)
    assert result.returncode == 0, result.stdout
    assert result.perf_value("refused") == TOTAL


STEPS = {   # where the server hangs up → what the plugin was waiting for
    "ehlo": "reply to EHLO", "after-ehlo": "reply to MAIL FROM",
    "mail": "reply to MAIL FROM", "rcpt": "reply to RCPT TO"}


def end_at(script: Script, step: str, how: str, once: bool = False) -> Script:
    """`script`, ending the connection (HANG_UP, RESET) at `step`; with `once`, only the first."""
    verb = "ehlo" if step == "after-ehlo" else step
    normal = getattr(script, verb)

    def answer(peer: Peer, line: str) -> str:
        reply = normal(peer, line) if callable(normal) else normal
        if once and peer.number > 1:
            return reply
        if step == "after-ehlo":   # the EHLO reply, then the end: the client's MAIL meets it
            peer.say(reply)
        return how
    setattr(script, verb, answer)
    return script


@pytest.mark.parametrize("step", [*STEPS, "rset"])
@pytest.mark.parametrize(("ehlo", "how"), [(EHLO, RESET), (EHLO_NO_PIPELINING, HANG_UP)],
                         ids=["pipelining-reset", "lockstep-close"])
def test_hang_up_once_at_any_step_costs_a_reconnect_not_a_result(step, ehlo, how):
    script = end_at(Script(ehlo=ehlo, rcpt=relay_plain), step, how, once=True)
    with HostileServer(script) as server:
        result = check(server, "--tests", FEW)
        connections = len(server.peers)
    assert result.returncode == 2, result.stdout
    assert "relayed 1 of 3 attempts (plain)" in result.status_line
    assert result.perf_value("refused") == 2
    assert connections == 2


@pytest.mark.parametrize("how", [HANG_UP, RESET], ids=["close", "reset"])
@pytest.mark.parametrize("step", STEPS)
def test_hang_up_at_every_connection_is_unknown_after_a_few_tries(step, how):
    with HostileServer(end_at(Script(), step, how)) as server:
        result = check(server)
        connections = len(server.peers)
    assert result.returncode == 3, result.stdout
    assert re.fullmatch(rf"OPEN_RELAY UNKNOWN - connection (closed by the server|lost .*) "
                        rf"\(at {STEPS[step]}\)", result.status_line), result.status_line
    # A server that always hangs up is not hammered: a few fruitless connections in a
    # row end the battery, plus those the other lanes had already opened.
    assert connections <= FRUITLESS_CONNECTIONS + LANES - 1


def test_hang_up_at_every_rset_still_decides_every_test():
    with HostileServer(Script(rcpt=ACCEPTED, rset=HANG_UP)) as server:
        result = check(server)
        connections = len(server.peers)
    assert result.returncode == 2, result.stdout
    assert f"relayed {TOTAL} of {TOTAL} attempts" in result.status_line
    assert TOTAL <= connections <= TOTAL + LANES - 1


def test_reset_mid_battery_after_a_relay_keeps_it_critical():
    vanishing = on_connection(nth({1: ACCEPTED}, RESET), RESET)
    with HostileServer(Script(ehlo=EHLO_NO_PIPELINING, rcpt=vanishing)) as server:
        result = check(server)
    assert result.returncode == 2, result.stdout
    # Whichever lane's connection the server took first got its first test accepted.
    match = re.match(rf"OPEN_RELAY CRITICAL - 127.0.0.1 relayed 1 of {TOTAL} attempts "
                     r"\(([a-z-]+)\)$", result.status_line)
    assert match, result.status_line
    assert f"  {match.group(1)} (" in result.long_output
    assert "\n    S: 250 2.1.5 Ok" in result.long_output
    assert result.perf_value("untested") == TOTAL - 1


# -- not SMTP at all ---------------------------------------------------------------------

def speak_first(data: bytes) -> Callable[[Peer], None]:
    def handler(peer: Peer) -> None:
        peer.send(data)
        peer.hold()
    return handler


def http_408(peer: Peer) -> None:
    """A web server that gives up on a client that never sends its request."""
    peer.stopping.wait(0.3)
    peer.send(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")


NOT_SMTP = {
    "ssh": speak_first(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"),
    "http": http_408,
    "binary": speak_first(bytes(range(256)) * 4),
    "no-codes": speak_first(b"hello there\r\nwelcome to my server\r\n"),
    "pop3": speak_first(b"+OK Dovecot ready.\r\n"),
    "short-code": speak_first(b"22 mx.hostile.test\r\n"),
}


@pytest.mark.parametrize("handler", NOT_SMTP.values(), ids=NOT_SMTP.keys())
def test_not_an_smtp_server_is_unknown_saying_so_at_once(handler):
    with HostileServer(handler) as server:
        result, took = timed(server, timeout="5")
    assert result.returncode == 3, result.stdout
    assert result.status_line.startswith("OPEN_RELAY UNKNOWN - not an SMTP server: ")
    assert took < 2.5   # the first bytes tell; no waiting for the deadline


def test_garbage_after_a_good_banner_is_unknown_naming_the_step():
    with HostileServer(Script(ehlo="hello, what is EHLO?")) as server:
        result = check(server)
    assert result.returncode == 3, result.stdout
    assert result.status_line.startswith("OPEN_RELAY UNKNOWN - not an SMTP server: ")
    assert result.status_line.endswith("(at reply to EHLO)")


# -- dialogue variants -------------------------------------------------------------------

def test_ehlo_and_helo_both_refused_is_unknown_naming_helo():
    refused = "550 5.7.1 <vm>: Helo command rejected: Host not found"
    with HostileServer(Script(ehlo="502 5.5.2 Error: command not recognized", helo=refused)) \
            as server:
        result = check(server)
        lines = server.connections[0]
    assert result.returncode == 3, result.stdout
    assert result.status_line == f"OPEN_RELAY UNKNOWN - refused: {refused} (at HELO)"
    assert [line.split(" ")[0] for line in lines] == ["EHLO", "HELO", "QUIT"]


@pytest.mark.parametrize("ehlo", [
    multiline(250, "mx.hostile.test", "SIZE 10240000", "PIPELINING", "ENHANCEDSTATUSCODES"),
    multiline(250, "mx.hostile.test", "SIZE 10240000", "ENHANCEDSTATUSCODES")],
    ids=["pipelining", "lockstep"])
def test_multi_line_replies_to_every_command(ehlo):
    def rcpt(peer: Peer, line: str) -> str:
        if relay_plain(peer, line) == ACCEPTED:
            return multiline(250, "2.1.5 Recipient ok,", "2.1.5 really")
        return multiline(554, "5.7.1 Relaying denied.", "5.7.1 Ask your postmaster")
    script = Script(banner=multiline(220, "mx.hostile.test ESMTP", "no UCE", "really"),
                    ehlo=ehlo, helo=multiline(250, "mx.hostile.test", "hello"),
                    mail=multiline(250, "2.1.0 Sender ok", "2.1.0 go on"), rcpt=rcpt,
                    rset=multiline(250, "2.0.0 Reset", "2.0.0 state cleared"),
                    quit=multiline(221, "2.0.0 Bye", "2.0.0 see you"))
    with HostileServer(script) as server:
        result = check(server)
    assert result.returncode == 2, result.stdout
    assert result.status_line == (
        f"OPEN_RELAY CRITICAL - 127.0.0.1 relayed 1 of {TOTAL} attempts (plain)")
    assert "banner: 220 mx.hostile.test ESMTP no UCE really" in result.long_output
    assert ("    S: 250-2.1.5 Recipient ok,\n    S: 250 2.1.5 really") in result.long_output
    assert result.perf_value("refused") == TOTAL - 1


@pytest.mark.parametrize(("rcpt", "code", "outcome"), [
    ("554 Relay access denied", 0, "refused"),
    ("550 Invalid recipient", 0, "refused"),
    ("550 5.1.1 User unknown", 0, "refused"),
    ("252 Cannot VRFY user, but will accept message", 2, "accepted"),
    ("252 2.1.5 Will try to deliver", 2, "accepted"),
    ("250 Ok", 2, "accepted"),
    ("451 Try again later", 1, "tempfail"),
    ("451 4.3.0 Try again later", 1, "tempfail"),
], ids=lambda value: str(value))
def test_replies_with_and_without_enhanced_status_codes(rcpt, code, outcome):
    with HostileServer(Script(rcpt=rcpt, mail="250 Ok", rset="250 Ok",
                              ehlo="250 mx.hostile.test")) as server:
        result = check(server, "--tests", FEW)
    assert result.returncode == code, result.stdout
    assert result.perf_value(outcome) == 3


# -- temporary failures ------------------------------------------------------------------

def some_tests_tempfail(accept_plain: bool) -> Callable[[Peer, str], str]:
    def rcpt(peer: Peer, line: str) -> str:
        if accept_plain and relay_plain(peer, line) == ACCEPTED:
            return ACCEPTED
        mails = [sent for sent in peer.lines if sent.upper().startswith("MAIL FROM:")]
        if mails[-1] == "MAIL FROM:<>" or "%" in line:
            return "451 4.3.0 Temporary lookup failure"
        return RELAY_DENIED
    return rcpt


def test_tempfail_on_some_tests_does_not_hide_a_relay_accepted_by_another():
    with HostileServer(Script(rcpt=some_tests_tempfail(accept_plain=True))) as server:
        result = check(server)
    assert result.returncode == 2, result.stdout
    assert result.status_line.startswith(
        f"OPEN_RELAY CRITICAL - 127.0.0.1 relayed 1 of {TOTAL} attempts (plain)")
    assert result.perf_value("tempfail") == 5


def test_tempfail_on_some_tests_is_a_warning_naming_them():
    with HostileServer(Script(rcpt=some_tests_tempfail(accept_plain=False))) as server:
        result = check(server)
    assert result.returncode == 1, result.stdout
    assert result.status_line == (
        f"OPEN_RELAY WARNING - 127.0.0.1 no relay accepted, but 5 of {TOTAL} attempts "
        "undecided (temporary failure): null-sender, percent-hack-literal, "
        "percent-hack-host, percent-hack-empty, quoted-percent")
    assert ("  temporary failure: 451 4.3.0 Temporary lookup failure: null-sender, "
            "percent-hack-literal, percent-hack-host, percent-hack-empty, quoted-percent"
            ) in result.long_output


# -- error limits: the battery goes on over fresh connections ----------------------------

@pytest.mark.parametrize("limit", [3, 20], ids=["exim-3", "postfix-20"])
def test_server_cutting_the_client_off_after_errors_gets_the_whole_battery(limit):
    with HostileServer(Script(max_errors=limit)) as server:
        result = check(server)
        cut_off = [peer.hung_up for peer in server.peers]
    assert result.returncode == 0, result.stdout
    assert result.perf_value("refused") == TOTAL
    assert len(cut_off) > 1
    # Exim's limit is met and survived; Postfix's is never reached: the plugin moves on first.
    assert any(cut_off) if limit == 3 else not any(cut_off)


@pytest.mark.parametrize("banner", [
    "220 mx.ex\u00e4mple.test ESMTP", "220 mx.ex\u0663mple.test ESMTP",
    "220 " + "a" * 64 + ".hostile.test ESMTP", "220 " + "a." * 200 + "test ESMTP"])
def test_a_host_name_from_the_server_is_used_only_if_it_is_plain_ascii(banner):
    """The name a server announces goes into spoofed senders: it must be sendable."""
    with HostileServer(Script(banner=banner)) as server:
        result = check(server, "--tests", "spoof-host")
        lines = server.connections[0]
    assert result.returncode == 0, result.stdout
    assert "MAIL FROM:<relaytest@mx.hostile.test>" in lines   # the EHLO name instead
    assert all(line.isascii() for line in lines)


def test_ipv6_target_with_literals_in_ipv6_form():
    with HostileServer(Script(rcpt=RELAY_DENIED), host="::1") as server:
        result = check(server, "--tests", "spoof-literal,percent-hack-literal")
        lines = server.connections[0]
    assert result.returncode == 0, result.stdout
    assert result.status_line == "OPEN_RELAY OK - ::1 refused all 2 relay attempts"
    assert "MAIL FROM:<relaytest@[IPv6:::1]>" in lines
    assert "RCPT TO:<relaytest%relay.example.net@[IPv6:::1]>" in lines


# -- safety: no DATA, every transaction reset, every connection quit ---------------------

def verb_of(line: str) -> str:
    return line.split(":", 1)[0].split(" ", 1)[0].upper()


SAFETY = {   # name: (server, reconnects)
    "pipelining": (Script(rcpt=ACCEPTED), False),
    "lockstep": (Script(ehlo=EHLO_NO_PIPELINING, rcpt=ACCEPTED), False),
    # 26 refusals fit the lanes' first connections (7 each, under Postfix's limits).
    "closed": (Script(), False),
    "pipelining-error-limit": (Script(max_errors=3), True),
    "lockstep-error-limit": (Script(ehlo=EHLO_NO_PIPELINING, max_errors=3), True),
    "pipelining-hang-ups": (Script(rcpt=nth({3: HANG_UP}, ACCEPTED)), True),
    "lockstep-hang-ups": (Script(ehlo=EHLO_NO_PIPELINING, rcpt=nth({3: HANG_UP}, ACCEPTED)),
                          True),
}


@pytest.mark.parametrize(("script", "reconnects"), SAFETY.values(), ids=SAFETY.keys())
def test_no_data_and_every_transaction_reset_and_quit_on_every_connection(script, reconnects):
    with HostileServer(script) as server:
        result = check(server)
        peers = list(server.peers)
    assert result.returncode in (0, 2), result.stdout
    assert result.perf_value("untested") == 0
    tried: set[tuple[str, str]] = set()
    for peer in peers:
        verbs = [verb_of(line) for line in peer.lines]
        assert not {"DATA", "BDAT", "BURL"} & set(verbs), peer.lines
        in_transaction = False
        mail = ""
        for line, verb in zip(peer.lines, verbs, strict=True):
            if verb == "MAIL":
                assert not in_transaction, f"MAIL before RSET: {peer.lines}"
                in_transaction, mail = True, line
            elif verb == "RSET":
                in_transaction = False
            elif verb == "RCPT":
                tried.add((mail, line))
        if not peer.hung_up:   # the client ended this connection: cleanly
            assert verbs[-1] == "QUIT", peer.lines
            assert not in_transaction, peer.lines
    assert len(tried) == TOTAL
    assert (len(peers) > LANES) == reconnects


# -- server text cannot forge output -----------------------------------------------------

EVIL = "ok | evil=1;2;3 \x1b[31m\x07\x00\x08\x7f\x85\u2028\u2029\u202e x" + "X" * 700


@pytest.mark.parametrize(("script", "state"), [
    (Script(banner="220 " + EVIL, rcpt="250 " + EVIL), 2),
    (Script(mail="554 5.7.1 " + EVIL), 1),
    (Script(rcpt="451 4.7.1 " + EVIL), 1),
    (Script(banner="421 4.3.2 " + EVIL), 3),
    (Script(banner=EVIL), 3),
    (Script(ehlo="250-" + EVIL + "\n" + EVIL), 3),
], ids=["accepted", "mail-refused", "tempfail", "421-banner", "not-smtp", "not-smtp-later"])
def test_server_text_cannot_forge_lines_fields_or_perfdata(script, state):
    with HostileServer(script) as server:
        result = check(server, "-vvv")   # every part of the long output, transcripts too
    assert result.returncode == state, result.stdout
    body, perfdata = result.stdout.rstrip("\n").rsplit("\n| ", 1)
    assert "|" not in body
    assert "evil" not in perfdata
    for line in body.split("\n"):
        assert line.isprintable(), repr(line)
        assert "X" * 201 not in line   # server text is cut at 200 characters a line
    assert body.count("\n") == len(body.splitlines()) - 1   # no other line breaks


@pytest.mark.parametrize(("ehlo", "why"), [
    # Pipelined, which sign comes first depends on when the last reply arrives.
    (EHLO, r"(not an SMTP server: server answered out of turn|RSET answered 554 5\.7\.1 "
           r"Relay access denied, not 250) \(at reply to RSET\)"),
    (EHLO_NO_PIPELINING, r"not an SMTP server: server answered out of turn "
                         r"\(at reply to RCPT TO\)")], ids=["pipelining", "lockstep"])
def test_extra_replies_are_not_pinned_on_the_next_command(ehlo, why):
    """A server that answers MAIL twice must not have its second 250 read as RCPT's."""
    with HostileServer(Script(ehlo=ehlo, mail="250 2.1.0 Ok\n250 2.1.0 Ok again")) as server:
        result = check(server)
    assert result.returncode == 3, result.stdout
    assert re.fullmatch(f"OPEN_RELAY UNKNOWN - {why}", result.status_line), result.status_line
    assert result.perf_value("accepted") == 0


def exim_nonmail_limit(peer: Peer, line: str) -> str:
    """Exim's smtp_accept_max_nonmail (10): the 11th RSET is refused, the client dropped."""
    if [verb_of(sent) for sent in peer.lines].count("RSET") > 10:
        peer.say("554 Too many nonmail commands")
        return HANG_UP
    return "250 Reset OK"


@pytest.mark.parametrize("ehlo", [EHLO, EHLO_NO_PIPELINING], ids=["pipelining", "lockstep"])
def test_a_refused_rset_costs_a_reconnect_not_the_battery(ehlo):
    with HostileServer(Script(ehlo=ehlo, rcpt=ACCEPTED, rset=exim_nonmail_limit)) as server:
        result = check(server)
    assert result.returncode == 2, result.stdout
    assert f"relayed {TOTAL} of {TOTAL} attempts" in result.status_line
    assert result.perf_value("untested") == 0


@pytest.mark.parametrize("reply", [
    "250 2.1.5 " + "Y" * 1000, multiline(250, *["2.1.5 " + "Z" * 300] * 99)],
    ids=["long-lines", "many-lines"])
def test_long_replies_keep_the_default_output_within_what_nagios_keeps(reply):
    with HostileServer(Script(banner="220 " + "B" * 1000, mail=reply, rcpt=reply)) as server:
        quiet = check(server)
        verbose = check(server, "-v")
    assert quiet.returncode == verbose.returncode == 2
    assert len(quiet.stdout.encode()) < 8192
    assert "more lines cut to stay within what Nagios keeps" in quiet.long_output
    assert quiet.status_line == verbose.status_line
    assert all(f"  {test_id} " in verbose.long_output for test_id in TEST_IDS)


@pytest.mark.parametrize(("ehlo", "state"), [(EHLO, 3), (EHLO_NO_PIPELINING, 2)],
                         ids=["pipelining", "lockstep"])
def test_rset_always_refused_voids_only_pipelined_answers(ehlo, state):
    """One command at a time, each reply was read before RSET went out: it stands.
    Pipelined, a refused RSET may be a reply out of step: nothing is claimed from it."""
    with HostileServer(Script(ehlo=ehlo, rcpt=ACCEPTED, rset="554 5.5.1 No RSET here")) \
            as server:
        result = check(server, "--tests", FEW)
    assert result.returncode == state, result.stdout
    if state == 3:
        assert result.status_line.endswith(
            "RSET answered 554 5.5.1 No RSET here, not 250 (at reply to RSET)")
        assert result.perf_value("accepted") == 0
    else:
        assert "relayed 3 of 3 attempts" in result.status_line
