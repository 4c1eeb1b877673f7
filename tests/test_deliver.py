"""--deliver, --verify-imap, --evidence-dir: proving a relay end to end, on loopback.

The real chain: an open Postfix (tests/mta.py) on 127.0.6.1 relays to a sink on
127.0.6.2 that writes into a Maildir, which a real Dovecot on 127.0.6.3 serves over
IMAPS and IMAP+STARTTLS (tests/mailchain.py).  The scriptable servers stand for what
no real MTA does on demand: accept everything and discard it, refuse at DATA.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import OUTSIDE, ROOT, PluginRun, plugin_command
from fakesmtp import Behaviour, FakeSMTP, accept_if, closed, open_relay
from hostile import ACCEPTED, HostileServer, Script, assert_sane
from mailchain import PASSWORD, SINK_ADDRESS, SINK_PORT, ImapServer, MaildirSink, dovecot
from mta import Server, client_address, postfix

from plugin.battery import TEST_IDS

POSTFIX_ADDRESS = "127.0.6.1"
FAKE_ADDRESS = "127.0.6.4"
HOSTILE_ADDRESS = "127.0.6.5"
HELO = "probe.test.example"
PLUGIN_SECONDS = 20
PROCESS_SECONDS = 40
TWO_FORMS = "plain,null-sender"


@pytest.fixture(scope="module")
def imap() -> Iterator[ImapServer]:
    with dovecot() as server:
        yield server


@pytest.fixture(scope="module")
def chain(imap: ImapServer) -> Iterator[tuple[Server, MaildirSink]]:
    """Postfix open to the plugin's address, relaying everything into the test mailbox."""
    client = client_address(POSTFIX_ADDRESS)
    with MaildirSink(imap.maildir) as sink, \
            postfix(POSTFIX_ADDRESS, "mx.open.example", mynetworks=f"{client}/32",
                    relayhost=f"[{SINK_ADDRESS}]:{SINK_PORT}") as server:
        yield server, sink


def run(*args: str, imap: ImapServer | None = None, env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = ()) -> PluginRun:
    """The plugin as a process; with `imap`, trusting that mailbox's private CA as an
    admin would (SSL_CERT_FILE)."""
    command = plugin_command()
    environment = dict(os.environ, **(env or {}))
    if command[0] == sys.executable:   # the checkout's script, as conftest.run_plugin does
        environment["PYTHONPATH"] = str(ROOT)
    if imap is not None:
        environment["SSL_CERT_FILE"] = str(imap.ca)
        environment.pop("SSL_CERT_DIR", None)
    done = subprocess.run([*prefix, *command, "--to", OUTSIDE, "--helo", HELO,
                           "-t", str(PLUGIN_SECONDS), *args], capture_output=True, text=True,
                          timeout=PROCESS_SECONDS, env=environment, stdin=subprocess.DEVNULL)
    result = PluginRun(done.returncode, done.stdout, done.stderr)
    assert_sane(result)
    return result


def verify(imap: ImapServer, *extra: str) -> tuple[str, ...]:
    return ("--deliver", "--verify-imap", imap.url(), "--imap-password-file",
            str(imap.password_file), *extra)


def data_count(server: FakeSMTP) -> int:
    return server.verbs().count("DATA")


# --- the real chain ------------------------------------------------------------------


def test_open_postfix_relay_is_confirmed_with_its_delay_and_evidence(chain, imap, tmp_path):
    server, sink = chain
    before = len(sink.delivered)
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    result = run("-H", POSTFIX_ADDRESS, "--tests", TWO_FORMS, "--evidence-dir", str(evidence),
                 *verify(imap), imap=imap)
    log = f"{result.stdout}\n--- postfix:\n{server.log_tail()}\n--- dovecot:\n{imap.log_tail()}"

    assert result.returncode == 2, log
    assert re.search(r"^OPEN_RELAY CRITICAL - 127\.0\.6\.1 relayed 2 of 2 attempts "
                     r"\(plain, null-sender\); relay confirmed: 2 test messages delivered "
                     r"in \d+\.\d\d s$", result.status_line), log
    assert re.search(r"^  plain: relay confirmed: delivered in \d+\.\d\d s$",
                     result.long_output, re.M), log
    assert re.search(r"^  null-sender: relay confirmed: delivered in \d+\.\d\d s$",
                     result.long_output, re.M), log
    assert result.perf_value("messages") == 2
    assert result.perf_value("confirmed") == 2
    assert result.perf_value("delivery_delay") > 0
    # Exactly one message per accepted form went through the relay, and both were
    # deleted from the mailbox once found.
    messages = sink.delivered[before:]
    assert len(messages) == 2
    assert imap.messages() == []
    for message, form in zip(messages, ("plain", "null-sender"), strict=True):
        text = message.decode()
        assert f"X-Open-Relay-Test-Form: {form}\r\n" in text
        assert "Subject: Open relay test: 127.0.6.1 relayed " in text
        assert "Content-Type: text/plain; charset=us-ascii\r\n" in text
        assert "multipart" not in text.lower()
    assert PASSWORD not in result.stdout + result.stderr

    files = sorted(evidence.iterdir())
    assert [path.name for path in files] == [files[0].name], files   # one, no temporary
    assert re.fullmatch(r"\d{8}T\d{6}Z-127\.0\.6\.1\.txt", files[0].name)
    text = files[0].read_text()
    assert PASSWORD not in text
    assert "Finding:     accepted 2 of 2 relay attempts at RCPT TO; relay confirmed: 2 test " \
           "messages delivered" in text
    assert "Banner:      220 mx.open.example ESMTP Postfix (Debian/GNU)" in text
    assert f"--imap-password-file {imap.password_file}" in text
    assert "Accepted attempt 1 of 2: plain (" in text
    assert "Accepted attempt 2 of 2: null-sender (" in text
    # The Received chain as the mailbox got it: the relay's own line, then the sink's.
    assert re.search(r"^    Received: from probe\.test\.example \(localhost \[127\.0\.0\.1\]\)\n"
                     r"^            by mx\.open\.example \(Postfix\) with ESMTP id \w+",
                     text, re.M)
    assert "by sink.mailbox.test with SMTP" in text
    # The full transcripts, the delivery connection with its DATA among them, in UTC.
    assert re.search(r"^  \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z C: DATA$", text, re.M)
    assert re.search(r"^  \S+Z S: 250 2\.0\.0 Ok: queued as \w+$", text, re.M)


def test_imap_with_starttls_and_the_password_from_the_environment(chain, imap):
    result = run("-H", POSTFIX_ADDRESS, "--tests", "plain", "--deliver",
                 "--verify-imap", imap.url(tls=False), "--imap-password-env", "RELAYTEST_PW",
                 imap=imap, env={"RELAYTEST_PW": PASSWORD})
    assert result.returncode == 2, result.stdout + imap.log_tail()
    assert "relay confirmed: 1 test message delivered in" in result.status_line
    assert "mailbox relaytest@127.0.6.3:1143/INBOX" in result.long_output
    assert imap.messages() == []


def test_without_deliver_the_real_relay_gets_no_message(chain):
    _, sink = chain
    before = len(sink.delivered)
    result = run("-H", POSTFIX_ADDRESS, "--tests", TWO_FORMS)
    assert result.returncode == 2
    assert "relay confirmed" not in result.stdout
    assert "messages" not in result.perfdata
    time.sleep(0.5)   # what Postfix took would be in the sink by now (it takes 50 ms)
    assert len(sink.delivered) == before


# --- servers that accept and then do not deliver ------------------------------------


def test_accept_then_discard_is_a_warning_not_a_relay(imap):
    with FakeSMTP(Behaviour(rcpt=open_relay), host=FAKE_ADDRESS) as server:
        result = run("-H", FAKE_ADDRESS, "-p", str(server.port), "--tests", TWO_FORMS,
                     *verify(imap, "--verify-wait", "2"), imap=imap)
        sent = data_count(server)
    assert result.returncode == 1, result.stdout
    assert re.fullmatch(r"OPEN_RELAY WARNING - 127\.0\.6\.4 accepted 2 of 2 attempts at RCPT "
                        r"\(plain, null-sender\), but not delivered: 2 test messages not "
                        r"delivered within 2\.\d\d s", result.status_line), result.stdout
    assert re.search(r"^  plain: accepted but not delivered within 2\.\d\d s$",
                     result.long_output, re.M)
    assert sent == 2
    assert result.perf_value("messages") == 2
    assert result.perf_value("confirmed") == 0
    assert "delivery_delay" not in result.perfdata


@pytest.mark.parametrize(("state", "code"), [("critical", 2), ("ok", 0)])
def test_unconfirmed_state_is_configurable(imap, state, code):
    with FakeSMTP(Behaviour(rcpt=open_relay), host=FAKE_ADDRESS) as server:
        result = run("-H", FAKE_ADDRESS, "-p", str(server.port), "--tests", "plain",
                     *verify(imap, "--verify-wait", "1", "--unconfirmed-state", state),
                     imap=imap)
    assert result.returncode == code, result.stdout
    assert "accepted but not delivered" in result.stdout


def test_refused_at_data_is_not_a_relay_and_no_message_text_is_sent():
    script = Script(rcpt=ACCEPTED, other="554 5.7.1 Transaction refused: no relaying")
    with HostileServer(script, host=HOSTILE_ADDRESS) as server:
        result = run("-H", HOSTILE_ADDRESS, "-p", str(server.port), "--tests", "plain",
                     "--deliver")
        delivery = server.connections[-1]
    assert result.returncode == 1, result.stdout
    assert "but not delivered: 1 test message refused" in result.status_line
    assert "  plain: refused at DATA: 554 5.7.1 Transaction refused: no relaying" \
        in result.long_output
    assert "DATA" in delivery
    assert not any(line.startswith(("Subject:", "X-Open-Relay-Test")) for line in delivery)


# --- what is sent, and how much ------------------------------------------------------


def test_one_message_per_accepted_form_with_the_battery_envelope_up_to_max_messages():
    with FakeSMTP(Behaviour(rcpt=open_relay), host=FAKE_ADDRESS) as server:
        result = run("-H", FAKE_ADDRESS, "-p", str(server.port), "--deliver",
                     "--max-messages", "3")
        commands = server.commands
    assert result.returncode == 2, result.stdout
    assert result.status_line.endswith("; 3 test messages taken for delivery")
    assert result.perf_value("messages") == 3
    data = [index for index, line in enumerate(commands) if line == "DATA"]
    assert len(data) == 3
    delivered = [(commands[index - 2], commands[index - 1]) for index in data]
    battery = {(line, commands[index + 1]) for index, line in enumerate(commands)
               if line.startswith("MAIL FROM:") and index < data[0] - 2}
    # The first three forms in battery order, with the same verbatim envelopes.
    assert delivered == [
        (f"MAIL FROM:<{OUTSIDE}>", f"RCPT TO:<{OUTSIDE}>"),
        ("MAIL FROM:<>", f"RCPT TO:<{OUTSIDE}>"),
        ("MAIL FROM:<relaytest@mx.fake.test>", f"RCPT TO:<{OUTSIDE}>")]
    assert set(delivered) <= battery
    more = len(TEST_IDS) - 3
    assert f"  no test message for {more} more accepted attempts (--max-messages 3 " \
           "reached): spoof-domain, " in result.long_output


def test_only_the_accepted_attempts_get_a_message():
    with FakeSMTP(Behaviour(rcpt=accept_if(r'^<"')), host=FAKE_ADDRESS) as server:
        result = run("-H", FAKE_ADDRESS, "-p", str(server.port), "--deliver")
        commands = server.commands
    assert result.returncode == 2, result.stdout
    rcpts = [commands[index - 1] for index, line in enumerate(commands) if line == "DATA"]
    assert len(rcpts) == 4
    assert all(rcpt.startswith('RCPT TO:<"') for rcpt in rcpts)


def test_a_closed_server_gets_no_message_and_the_mailbox_is_still_checked(imap):
    with FakeSMTP(Behaviour(rcpt=closed), host=FAKE_ADDRESS) as server:
        result = run("-H", FAKE_ADDRESS, "-p", str(server.port), *verify(imap), imap=imap)
        sent = data_count(server)
    assert result.returncode == 0, result.stdout
    assert sent == 0
    assert result.perf_value("messages") == 0


def test_leftover_test_messages_are_deleted_and_other_mail_is_left(imap):
    """A test message that arrived after its run's wait is deleted days later; mail that
    is not a test message is never touched."""
    def drop(name: str, date: datetime, token: str | None) -> Path:
        header = f"X-Open-Relay-Test: {token}\n" if token else ""
        path = imap.maildir / "new" / name
        path.write_text(f"From: <a@relay.example.net>\nSubject: x\n"
                        f"Date: {date:%a, %d %b %Y %H:%M:%S +0000}\n{header}\nbody\n")
        return path

    old = datetime.now(UTC) - timedelta(days=10)
    late = drop("1.late.test", old, "0123456789abcdef.1")
    recent = drop("2.recent.test", datetime.now(UTC), "fedcba9876543210.1")
    other = drop("3.other.test", old, None)
    with FakeSMTP(Behaviour(rcpt=closed), host=FAKE_ADDRESS) as server:
        result = run("-H", FAKE_ADDRESS, "-p", str(server.port), *verify(imap), imap=imap)
    assert result.returncode == 0, result.stdout
    names = {path.name.split(":")[0] for path in imap.messages()}
    assert late.name not in names
    assert {recent.name, other.name} <= names   # a run in progress may wait for `recent`
    for path in imap.messages():
        path.unlink()


# --- the mailbox password ------------------------------------------------------------


WRONG = "Wrong-Horse-4417-not-it"


def test_wrong_imap_password_is_unknown_and_nothing_is_sent_or_shown(imap, tmp_path):
    wrong = tmp_path / "wrong.pass"
    wrong.write_text(f"{WRONG}\n")
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    with FakeSMTP(Behaviour(rcpt=open_relay), host=FAKE_ADDRESS) as server:
        result = run("-H", FAKE_ADDRESS, "-p", str(server.port), "--tests", "plain",
                     "--deliver", "--verify-imap", imap.url(), "--imap-password-file",
                     str(wrong), "--evidence-dir", str(evidence), "-vvv", imap=imap)
        sent = data_count(server)
    assert result.returncode == 3, result.stdout
    assert result.status_line == (
        "OPEN_RELAY UNKNOWN - 127.0.6.4 accepted 1 of 1 attempts at RCPT (plain), not proven: "
        "mailbox relaytest@127.0.6.3:1993/INBOX: login failed: [AUTHENTICATIONFAILED] "
        "Authentication failed.")
    assert sent == 0   # a message that could not be found and deleted is not sent
    files = list(evidence.iterdir())
    assert len(files) == 1
    for text in (result.stdout, result.stderr, files[0].read_text()):
        assert WRONG not in text
        assert PASSWORD not in text


def test_wrong_imap_password_with_a_closed_server_is_unknown_too(imap, tmp_path):
    wrong = tmp_path / "wrong.pass"
    wrong.write_text(f"{WRONG}\n")
    with FakeSMTP(Behaviour(rcpt=closed), host=FAKE_ADDRESS) as server:
        result = run("-H", FAKE_ADDRESS, "-p", str(server.port), "--deliver", "--verify-imap",
                     imap.url(), "--imap-password-file", str(wrong), imap=imap)
    assert result.returncode == 3, result.stdout
    assert result.status_line.startswith(
        "OPEN_RELAY UNKNOWN - mailbox relaytest@127.0.6.3:1993/INBOX: login failed: "
        "[AUTHENTICATIONFAILED]")
    assert "127.0.6.4 OK" in result.status_line
    assert WRONG not in result.stdout


def test_untrusted_imap_certificate_is_unknown(imap):
    with FakeSMTP(Behaviour(rcpt=open_relay), host=FAKE_ADDRESS) as server:
        result = run("-H", FAKE_ADDRESS, "-p", str(server.port), "--tests", "plain",
                     *verify(imap))   # without the test CA
        sent = data_count(server)
    assert result.returncode == 3, result.stdout
    assert "mailbox relaytest@127.0.6.3:1993/INBOX: connect to 127.0.6.3 port 1993: " \
           "[SSL: CERTIFICATE_VERIFY_FAILED]" in result.status_line
    assert sent == 0


# --- evidence files ------------------------------------------------------------------


def test_evidence_without_deliver_records_the_dialogue_and_sends_no_data(tmp_path):
    with FakeSMTP(Behaviour(rcpt=open_relay), host=FAKE_ADDRESS) as server:
        plain = run("-H", FAKE_ADDRESS, "-p", str(server.port), "--tests", TWO_FORMS)
        result = run("-H", FAKE_ADDRESS, "-p", str(server.port), "--tests", TWO_FORMS,
                     "--evidence-dir", str(tmp_path))
        sent = data_count(server)
    assert result.returncode == plain.returncode == 2
    assert result.status_line == plain.status_line
    assert sent == 0
    [path] = tmp_path.iterdir()
    assert f"Evidence written: {path}" in result.long_output
    text = path.read_text()
    assert "Finding:     accepted 2 of 2 relay attempts at RCPT TO\n" in text
    assert "  C: MAIL FROM:<>\n  S: 250 2.1.0 Ok\n  C: RCPT TO:<relaytest@relay.example.net>\n" \
           "  S: 250 2.1.5 Ok\n" in text
    assert "Test message" not in text
    assert oct(path.stat().st_mode & 0o777) == "0o640"


def test_no_evidence_file_for_a_closed_server(tmp_path):
    with FakeSMTP(Behaviour(rcpt=closed), host=FAKE_ADDRESS) as server:
        result = run("-H", FAKE_ADDRESS, "-p", str(server.port), "--evidence-dir",
                     str(tmp_path))
    assert result.returncode == 0
    assert list(tmp_path.iterdir()) == []


def test_evidence_never_overwrites_and_leaves_no_temporary_file(tmp_path):
    # Every name the run could pick for its time is taken already.
    now = datetime.now(UTC)
    taken = {}
    for second in range(-2, PLUGIN_SECONDS + 5):
        name = f"{now + timedelta(seconds=second):%Y%m%dT%H%M%SZ}-{FAKE_ADDRESS}.txt"
        taken[name] = f"an older report {second}\n"
        (tmp_path / name).write_text(taken[name])
    with FakeSMTP(Behaviour(rcpt=open_relay), host=FAKE_ADDRESS) as server:
        result = run("-H", FAKE_ADDRESS, "-p", str(server.port), "--tests", "plain",
                     "--evidence-dir", str(tmp_path))
    assert result.returncode == 2
    for name, text in taken.items():
        assert (tmp_path / name).read_text() == text
    new = sorted(set(path.name for path in tmp_path.iterdir()) - set(taken))
    assert len(new) == 1 and new[0].endswith(f"-{FAKE_ADDRESS}-2.txt"), new
    assert (tmp_path / new[0]).read_text().startswith("Open relay evidence: 127.0.6.4 port ")


def test_missing_evidence_dir_is_reported_and_the_result_still_printed(tmp_path):
    missing = tmp_path / "no-such-folder"
    with FakeSMTP(Behaviour(rcpt=open_relay), host=FAKE_ADDRESS) as server:
        plain = run("-H", FAKE_ADDRESS, "-p", str(server.port), "--tests", "plain")
        result = run("-H", FAKE_ADDRESS, "-p", str(server.port), "--tests", "plain",
                     "--evidence-dir", str(missing))
    assert result.returncode == 2
    assert result.status_line == plain.status_line
    assert f"Evidence not written: cannot write to {missing}: No such file or directory" \
        in result.long_output
    assert result.perfdata.keys() == plain.perfdata.keys()


def test_read_only_evidence_dir_is_reported_and_the_result_still_printed(tmp_path):
    # Root may write anywhere a mode forbids it; a read-only mount stops even root.
    # The mount exists only in the plugin's own mount namespace.
    folder = tmp_path / "read-only"
    folder.mkdir()
    prefix = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
              'mount --bind -o ro "$0" "$0" && exec "$@"', str(folder))
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    with FakeSMTP(Behaviour(rcpt=open_relay), host=FAKE_ADDRESS) as server:
        result = run("-H", FAKE_ADDRESS, "-p", str(server.port), "--tests", "plain",
                     "--evidence-dir", str(folder), prefix=prefix)
    assert result.returncode == 2, result.stdout
    assert result.status_line.startswith("OPEN_RELAY CRITICAL - 127.0.6.4 relayed 1 of 1")
    assert f"Evidence not written: cannot write to {folder}: Read-only file system" \
        in result.long_output
    assert list(folder.iterdir()) == []


# --- usage errors --------------------------------------------------------------------


def password_file(tmp_path: Path) -> str:
    path = tmp_path / "pass"
    path.write_text(f"{PASSWORD}\n")
    return str(path)


USAGE = [
    (["--verify-imap", "imaps://u@h/INBOX", "--imap-password-file", "{file}"],
     "--verify-imap needs --deliver: it looks for the test messages that --deliver sends"),
    (["--deliver", "--verify-imap", f"imaps://u:{PASSWORD}@h/INBOX"],
     "--verify-imap URL must not hold a password: use --imap-password-file or "
     "--imap-password-env"),
    (["--deliver", "--verify-imap", "https://u@h/INBOX", "--imap-password-file", "{file}"],
     "--verify-imap URL must start with imaps:// or imap:// (STARTTLS)"),
    (["--deliver", "--verify-imap", "imaps://h/INBOX", "--imap-password-file", "{file}"],
     "--verify-imap URL names no user (imaps://USER@HOST/MAILBOX)"),
    (["--deliver", "--verify-imap", "imaps://u@h/INBOX"],
     "--verify-imap needs the password from exactly one of --imap-password-file FILE and "
     "--imap-password-env NAME"),
    (["--deliver", "--verify-imap", "imaps://u@h/INBOX", "--imap-password-file", "{file}",
      "--imap-password-env", "HOME"],
     "--verify-imap needs the password from exactly one of --imap-password-file FILE and "
     "--imap-password-env NAME"),
    (["--deliver", "--verify-imap", "imaps://u@h/INBOX", "--imap-password-file", "/nonexistent"],
     "--imap-password-file /nonexistent: No such file or directory"),
    (["--deliver", "--verify-imap", "imaps://u@h/INBOX", "--imap-password-env", "UNSET_PW_VAR"],
     "--imap-password-env UNSET_PW_VAR: the password is empty or not printable ASCII"),
    (["--deliver", "--max-messages", "0"], "--max-messages 0 must be from 1 to 100"),
    (["--deliver", "--verify-wait", "0"], "--verify-wait 0 must be more than 0 and at most 3600"),
    (["--evidence-dir", ""], "--evidence-dir is empty or contains a CR, LF or NUL character"),
]


@pytest.mark.parametrize(("args", "message"), USAGE, ids=[row[1][:40] for row in USAGE])
def test_bad_proof_options_are_one_line_usage_errors(tmp_path, args, message):
    args = [arg.replace("{file}", password_file(tmp_path)) for arg in args]
    result = run("-H", "127.0.0.1", *args, env={"UNSET_PW_VAR": ""})
    assert result.returncode == 3
    assert result.stdout == f"OPEN_RELAY UNKNOWN - {message}\n"
    assert PASSWORD not in result.stdout
