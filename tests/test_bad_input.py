"""Bad command lines: exit 3, exactly one line saying what is wrong, and no connection."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from conftest import OUTSIDE, run_plugin

from plugin import cli


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port that records connection attempts: the kernel completes them unaccepted."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    with sock:
        yield sock


def assert_no_connection(sock: socket.socket) -> None:
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.accept()


def assert_one_line_unknown(stdout: str, stderr: str, returncode: int) -> str:
    assert returncode == 3, stdout
    assert stderr == ""
    assert stdout.endswith("\n") and stdout.count("\n") == 1, stdout
    assert stdout.startswith("OPEN_RELAY UNKNOWN - "), stdout
    return stdout.rstrip("\n")


def run_bad(sock: socket.socket, *args: str, host: str = "127.0.0.1",
            port: str | None = None, to: str = OUTSIDE) -> str:
    port = str(sock.getsockname()[1]) if port is None else port
    result = run_plugin("-H", host, "-p", port, "--to", to, "-t", "3", *args, timeout=30)
    line = assert_one_line_unknown(result.stdout, result.stderr, result.returncode)
    assert_no_connection(sock)
    return line


MALFORMED_ADDRESSES = [
    "relaytest", "relaytest@", "@relay.example.net", "relaytest@relay",
    "relay test@relay.example.net", "<relaytest@relay.example.net>",
    "relaytest@relay.example.net>", "relaytest@relay.example.net SIZE=1",
    "relaytest@[300.1.1.1]", "relaytest@[IPv6:::1", '"relay test"@relay.example.net',
    "relaytest@relay..example.net", "relaytest@-relay.example.net",
    "rela\u00fftest@relay.example.net",
]


@pytest.mark.parametrize("address", MALFORMED_ADDRESSES)
def test_malformed_recipient_is_refused_before_any_connection(listener, address):
    assert "--to " in run_bad(listener, to=address)


@pytest.mark.parametrize("address", MALFORMED_ADDRESSES[::3])
def test_malformed_sender_is_refused_before_any_connection(listener, address):
    assert "--from " in run_bad(listener, "--from", address)


@pytest.mark.parametrize("bad", ["\r", "\n", "\r\nDATA\r\n"])
@pytest.mark.parametrize("option", ["--to", "--from", "--helo", "--target-domain", "-H"])
def test_cr_or_lf_in_anything_sent_is_refused(listener, option, bad):
    values = {"--to": OUTSIDE, "--from": "spammer@outside.example.org",
              "--helo": "checker.example.org", "--target-domain": "target.example.org",
              "-H": "127.0.0.1"}
    value = values[option]
    dirty = value[:4] + bad + value[4:]
    if option == "--to":
        line = run_bad(listener, to=dirty)
    elif option == "-H":
        line = run_bad(listener, host=dirty)
    else:
        line = run_bad(listener, option, dirty)
    assert "contains a CR, LF or NUL character" in line


@pytest.mark.parametrize("option", ["--to", "--from", "--helo", "--target-domain",
                                    "--hostname"])
def test_nul_in_anything_sent_is_refused(option, capsys):
    """No process can be given a NUL in its arguments, so this one runs in-process."""
    args = {"--hostname": "127.0.0.1", "--to": OUTSIDE, "--from": "spammer@outside.example.org",
            "--helo": "checker.example.org", "--target-domain": "target.example.org"}
    args[option] = args[option][:4] + "\x00" + args[option][4:]
    with pytest.raises(SystemExit) as exit_:
        cli.main([item for pair in args.items() for item in pair])
    out, err = capsys.readouterr()
    assert_one_line_unknown(out, err, exit_.value.code)
    assert "contains a CR, LF or NUL character" in out


@pytest.mark.parametrize("port", ["0", "-1", "70000", "65536", "abc", "nan", "1.5", ""])
def test_out_of_range_or_garbage_port(listener, port):
    run_bad(listener, port=port)


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "-inf", "abc", "1e9", ""])
def test_out_of_range_or_garbage_timeout(listener, timeout):
    line = run_bad(listener, "-t", timeout)
    assert "timeout" in line


@pytest.mark.parametrize("tests", ["nope", "plain,nope", "PLAIN", "plain;null-sender"])
def test_unknown_test_ids(listener, tests):
    line = run_bad(listener, "--tests", tests)
    assert "unknown test id" in line


@pytest.mark.parametrize(("option", "value"), [
    ("-H", "mail server.example.org"), ("-H", "exa_mple.org"), ("-H", "[127.0.0.1]"),
    ("-H", ""), ("-H", "-mx.example.org"),
    ("--helo", "checker example.org"), ("--helo", "[1.2.3]"), ("--helo", "-checker"),
    ("--target-domain", "localhost"), ("--target-domain", "target example.org"),
    ("--foreign-literal", "192.0.2"), ("--foreign-literal", "[192.0.2.1]"),
    ("--starttls", "sometimes"), ("-w", "ten"), ("-c", "10:5:2"),
])
def test_malformed_names_and_options(listener, option, value):
    if option == "-H":
        run_bad(listener, host=value)
    else:
        run_bad(listener, option, value)


def test_unresolvable_host_name_is_one_line_unknown():
    result = run_plugin("-H", "no-such-host.invalid", "--to", OUTSIDE, "-t", "5", timeout=30)
    line = assert_one_line_unknown(result.stdout, result.stderr, result.returncode)
    assert "no-such-host.invalid" in line
