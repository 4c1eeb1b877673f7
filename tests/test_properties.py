"""Property tests: whatever a server sends, parsing and judging end in a documented way.

The reply parser and the session's reply reading meet untrusted bytes; the classifier
meets whatever replies come out of them.  No exception may escape but the documented
ones (ReplyFormatError from the parser; SessionError and its kinds from the session),
and every judgement is an Outcome.
"""

from __future__ import annotations

import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugin.classify import MAIL, RCPT, Judgement, Outcome, classify, judge
from plugin.reply import (
    MAX_LINE_BYTES,
    MAX_REPLY_LINES,
    MAX_TEXT_CHARS,
    Reply,
    ReplyFormatError,
    check_start,
    parse_line,
    printable,
)
from plugin.session import Deadline, Exchange, RelaySession, SessionError, Transcript

# Lines that are nearly replies reach deeper than random bytes: codes in and out of
# range, every separator, any text, with and without line ends.
reply_like_lines = st.builds(
    lambda code, separator, text, end: code + separator + text + end,
    st.sampled_from([b"220", b"250", b"421", b"550", b"199", b"600", b"25", b"2500", b""]),
    st.sampled_from([b" ", b"-", b"", b"\t", b"x"]),
    st.binary(max_size=80),
    st.sampled_from([b"\r\n", b"\n", b"\r", b""]))
server_bytes = st.one_of(
    st.binary(max_size=4096),
    st.lists(st.one_of(reply_like_lines, st.binary(max_size=20)), max_size=40).map(b"".join),
    st.builds(lambda count, last: b"250-x\r\n" * count + last,
              st.integers(0, MAX_REPLY_LINES + 5), reply_like_lines),
    st.builds(lambda size: b"250 " + b"A" * size + b"\r\n",
              st.integers(MAX_LINE_BYTES - 10, MAX_LINE_BYTES + 10)),
)
replies = st.builds(Reply, st.integers(-10**6, 10**6), st.lists(st.text(), max_size=5).map(tuple))


@given(st.binary(max_size=600))
def test_parse_line_returns_a_reply_line_or_raises_reply_format_error(raw):
    try:
        code, is_last, text = parse_line(raw)
    except ReplyFormatError:
        return
    assert 200 <= code <= 599
    assert isinstance(is_last, bool)
    assert isinstance(text, str)


@given(st.one_of(reply_like_lines, st.binary(max_size=40)))
def test_check_start_never_rejects_the_start_of_a_line_parse_line_accepts(raw):
    line = raw.split(b"\n", 1)[0]
    try:
        parse_line(line)
    except ReplyFormatError:
        return
    for end in range(len(line) + 1):
        check_start(line[:end])   # must not raise


@given(st.binary(max_size=40))
def test_what_check_start_rejects_parse_line_rejects(raw):
    try:
        check_start(raw)
    except ReplyFormatError:
        with pytest.raises(ReplyFormatError):
            parse_line(raw.split(b"\n", 1)[0])


def read_all_replies(data: bytes) -> list[Reply]:
    """Feed `data` to a session through a socket pair, then hang up; read every reply."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
        session = RelaySession("checker.example.org", Deadline(5), Transcript(1, "test"))
        session.sock = ours
        session.step = "banner"
        got: list[Reply] = []
        try:
            while True:
                got.append(session.read_reply())
        except SessionError:
            return got


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(server_bytes)
def test_session_reading_ends_in_replies_or_a_session_error(data):
    for reply in read_all_replies(data):
        assert 200 <= reply.code <= 599
        assert 1 <= len(reply.lines) <= MAX_REPLY_LINES
        assert all(len(line.encode("utf-8", "replace")) <= 3 * MAX_LINE_BYTES
                   for line in reply.lines)


@given(st.lists(st.tuples(st.sampled_from([220, 250, 354, 421, 451, 550, 554]),
                          st.lists(st.text(st.characters(blacklist_categories=("Cs",),
                                                         blacklist_characters="\r\n"),
                                           max_size=30), min_size=1, max_size=4)),
                max_size=6))
def test_session_reads_well_formed_replies_exactly(sent):
    """Well-formed replies come back as sent, line for line."""
    data = b"".join(
        b"".join(f"{code}{'-' if index < len(lines) - 1 else ' '}{line}\r\n".encode()
                 for index, line in enumerate(lines))
        for code, lines in sent)
    got = read_all_replies(data)
    if 421 in [code for code, _ in sent]:   # 421 ends the session, as the server said
        sent = sent[:[code for code, _ in sent].index(421)]
    assert [(reply.code, list(reply.lines)) for reply in got] == [
        (code, [line.strip() for line in lines]) for code, lines in sent]


@given(st.sampled_from([MAIL, RCPT]), replies)
def test_classify_gives_an_outcome_and_a_reason_for_any_reply(stage, reply):
    outcome, reason = classify(stage, reply)
    assert outcome in Outcome
    assert isinstance(reason, str) and reason


@given(st.one_of(st.none(), replies), st.one_of(st.none(), replies))
def test_judge_gives_an_outcome_for_any_pair_of_replies(mail, rcpt):
    judgement = judge(mail, rcpt)
    assert isinstance(judgement, Judgement)
    assert judgement.outcome in Outcome
    if judgement.reached_rcpt:   # only through an accepted MAIL, judged by the RCPT reply
        assert mail is not None and rcpt is not None
        assert classify(MAIL, mail)[0] is Outcome.ACCEPTED
        assert judgement.outcome is classify(RCPT, rcpt)[0]


@given(replies)
def test_replies_print_safely(reply):
    for text in [str(reply), *reply.wire_lines()]:
        assert text.isprintable() and "|" not in text
        assert len(text) <= MAX_TEXT_CHARS
    assert reply.enhanced is None or reply.enhanced[0] == str(reply.code)[0]


@given(st.text(), st.integers(3, 500))
def test_printable_is_printable_and_bounded(text, limit):
    cleaned = printable(text, limit)
    assert cleaned.isprintable() and "|" not in cleaned
    assert len(cleaned) <= limit
    assert cleaned == text or len(text) > limit or any(
        not char.isprintable() or char == "|" for char in text)


SMUGGLERS = ["<a@example.org>\r\nDATA", "<a@example.org>\rDATA", "<a@example.org>\nDATA",
             "<a@exa\x00mple.org>", "<a@ex\u00e4mple.org>"]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "lockstep"])
@pytest.mark.parametrize("where", ["sender", "recipient"])
@pytest.mark.parametrize("address", SMUGGLERS)
def test_session_refuses_to_send_a_command_that_would_smuggle_in_another(
        address, where, pipelining):
    """The last line of defence, should anything ever let such an address through."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        session = RelaySession("checker.example.org", Deadline(5), Transcript(1, "test"))
        session.sock = ours
        session.esmtp_features = {"pipelining": ""} if pipelining else {}
        theirs.sendall(b"250 2.1.0 Ok\r\n")   # the reply to a clean MAIL, if one goes out
        clean = "<b@example.org>"
        mail_from, rcpt_to = (address, clean) if where == "sender" else (clean, address)
        with pytest.raises(SessionError, match="refusing to send"):
            session.transaction(mail_from, rcpt_to, Exchange())
        theirs.setblocking(False)
        try:
            sent = theirs.recv(1000)
        except BlockingIOError:
            sent = b""
    assert sent in (b"", f"MAIL FROM:{clean}\r\n".encode())   # never the smuggled line
