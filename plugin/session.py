"""One SMTP connection, spoken verbatim, recorded line by line, bounded by a deadline.

smtplib carries the connection, EHLO parsing and STARTTLS.  Two of its habits do not
fit a relay check, so they are replaced here: replies are read against the check's
absolute deadline (a per-read socket timeout lets a server that trickles one byte a
second hold the check forever), and MAIL/RCPT go out as written (smtplib.mail() and
rcpt() re-quote addresses, which rewrites the very forms the battery exists to send).
"""

from __future__ import annotations

import smtplib
import socket
import ssl  # smtplib imports it anyway
import time
from dataclasses import dataclass, field

from .reply import (
    MAX_LINE_BYTES,
    MAX_REPLY_LINES,
    Reply,
    ReplyFormatError,
    check_start,
    parse_line,
)


class Deadline:
    """An absolute end time for the whole check."""

    def __init__(self, seconds: float, start: float | None = None) -> None:
        self.start = time.monotonic() if start is None else start
        self.seconds = seconds
        self.end = self.start + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


class SessionError(Exception):
    """The dialogue could not go on.  `step` names what we were waiting for."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


class DeadlineExpired(SessionError):
    pass


class ConnectionLost(SessionError, smtplib.SMTPServerDisconnected):
    """The server hung up, or said it would (421, kept in `reply`)."""

    def __init__(self, step: str, reason: str, reply: Reply | None = None) -> None:
        super().__init__(step, reason)
        self.reply = reply


class NotSMTP(SessionError):
    pass


class UntrustedCertificate(SessionError):
    """--tls-verify was asked for and the server's certificate failed it."""

    def __init__(self, exc: ssl.SSLCertVerificationError) -> None:
        super().__init__("TLS handshake",
                         f"certificate not trusted ({exc.verify_message or exc.reason})")


@dataclass(frozen=True)
class TranscriptLine:
    offset: float        # seconds since the check started
    direction: str       # ">" client to server, "<" server to client, "*" a note
    text: str


@dataclass
class Exchange:
    """The replies of one MAIL/RCPT/RSET transaction, each None until it has arrived."""

    mail: Reply | None = None
    rcpt: Reply | None = None
    rset: Reply | None = None


@dataclass
class Transcript:
    connection: int
    address: str
    lines: list[TranscriptLine] = field(default_factory=list)


class RelaySession(smtplib.SMTP):
    """An smtplib.SMTP that records and obeys a deadline.

    The battery never sends DATA through it; only the opt-in delivery phase
    (delivery.py, --deliver) does.
    """

    def __init__(self, helo: str, deadline: Deadline, transcript: Transcript,
                 tls_context=None, tls_name: str | None = None) -> None:
        super().__init__(local_hostname=helo, timeout=max(deadline.remaining(), 0.01))
        self.deadline = deadline
        self.transcript = transcript
        self.implicit_tls_context = tls_context
        self.tls_name = tls_name
        self.step = "connect"
        self.ehlo_msg = "EHLO"
        self._buffer = bytearray()

    # -- recording -------------------------------------------------------------

    def note(self, text: str) -> None:
        self._record("*", text)

    def _record(self, direction: str, text: str) -> None:
        offset = round(self.deadline.elapsed(), 3)
        self.transcript.lines.append(TranscriptLine(offset, direction, text))

    # -- transport -------------------------------------------------------------

    def _get_socket(self, host, port, timeout):
        self.step = "connect"
        remaining = self._remaining()
        try:
            sock = socket.create_connection((host, port), remaining, self.source_address)
        except TimeoutError as exc:
            raise self._expired() from exc
        except OSError as exc:
            raise SessionError("connect", exc.strerror or str(exc)) from exc
        if self.implicit_tls_context is not None:
            sock = self._handshake(sock, self.implicit_tls_context, self.tls_name or host)
        self._buffer.clear()
        return sock

    def _handshake(self, sock: socket.socket, context, server_name: str) -> socket.socket:
        """TLS over `sock`, within the deadline; the plain socket is closed on failure."""
        self.step = "TLS handshake"
        try:
            sock.settimeout(self._remaining())
            return context.wrap_socket(sock, server_hostname=server_name)
        except TimeoutError as exc:
            sock.close()
            raise self._expired() from exc
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise UntrustedCertificate(exc) from exc
        except OSError as exc:
            sock.close()
            raise SessionError("TLS handshake", str(exc)) from exc

    def send(self, s) -> None:
        if self._buffer:
            # Every reply asked for has been read, so these bytes answer nothing; read
            # as the next reply, they would pin the server's words on the wrong command.
            raise self._unreadable("server answered out of turn")
        data = s.encode(self.command_encoding) if isinstance(s, str) else s
        for line in data.decode("latin-1").split("\r\n"):
            if line:
                self._record(">", line)
        if self.sock is None:
            raise ConnectionLost(self.step, "not connected")
        try:
            self.sock.settimeout(self._remaining())
            self.sock.sendall(data)
        except TimeoutError as exc:
            raise self._expired() from exc
        except OSError as exc:
            self.close()
            raise ConnectionLost(self.step, f"connection lost while sending ({exc})") from exc

    def getreply(self):
        """Read one complete reply, as smtplib expects: (code, b'line\\nline')."""
        reply = self.read_reply()
        return reply.code, "\n".join(reply.lines).encode("utf-8", "replace")

    def read_reply(self) -> Reply:
        lines: list[str] = []
        code = 0
        while True:
            raw = self._read_line()
            self._record("<", raw.decode("utf-8", "replace").rstrip("\r\n"))
            try:
                line_code, is_last, text = parse_line(raw)
            except ReplyFormatError as exc:
                self.close()
                raise NotSMTP(self.step, str(exc)) from exc
            if lines and line_code != code:
                self.close()
                raise NotSMTP(self.step, "reply code changed inside a multi-line reply")
            code = line_code
            lines.append(text)
            if is_last:
                reply = Reply(code, tuple(lines))
                if code == 421:
                    self.close()
                    raise ConnectionLost(self.step, f"server closing: {reply}", reply)
                return reply
            if len(lines) >= MAX_REPLY_LINES:
                self.close()
                raise NotSMTP(self.step, f"reply longer than {MAX_REPLY_LINES} lines")

    def _read_line(self) -> bytes:
        while True:
            try:
                check_start(self._buffer)
            except ReplyFormatError as exc:
                raise self._unreadable(str(exc)) from exc
            end = self._buffer.find(b"\n")
            if end > MAX_LINE_BYTES or (end < 0 and len(self._buffer) > MAX_LINE_BYTES):
                self.close()
                raise NotSMTP(self.step, f"reply line longer than {MAX_LINE_BYTES} bytes")
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            if self.sock is None:
                raise ConnectionLost(self.step, "not connected")
            try:
                self.sock.settimeout(self._remaining())
                chunk = self.sock.recv(4096)
            except TimeoutError as exc:
                raise self._expired() from exc
            except OSError as exc:
                self.close()
                raise ConnectionLost(self.step, f"connection lost ({exc})") from exc
            if not chunk:
                self.close()
                raise ConnectionLost(self.step, "connection closed by the server")
            self._buffer += chunk

    def _unreadable(self, reason: str) -> NotSMTP:
        """Record what the server sent that is no reply to anything, and hang up."""
        said = bytes(self._buffer[:MAX_LINE_BYTES]).split(b"\n", 1)[0]
        self._record("<", said.decode("utf-8", "replace").rstrip("\r"))
        self.close()
        return NotSMTP(self.step, reason)

    def _remaining(self) -> float:
        remaining = self.deadline.remaining()
        if remaining <= 0:
            raise self._expired()
        return remaining

    def _expired(self) -> DeadlineExpired:
        self.close()
        return DeadlineExpired(self.step, f"no answer within {self.deadline.seconds:g} s")

    # -- dialogue --------------------------------------------------------------

    def open(self, address: str, port: int) -> Reply:
        """Connect and read the banner."""
        self.step = "connect"
        self.note(f"connecting to {address} port {port}")
        self.sock = self._get_socket(address, port, self.timeout)
        self.file = None
        self._host = self.tls_name or address
        self.step = "banner"
        return self.read_reply()

    def greet(self) -> Reply:
        """EHLO, falling back to HELO when EHLO is refused."""
        self.step = "reply to EHLO"
        code, _ = self.ehlo()
        if code == 250:
            return Reply(250, tuple(self.ehlo_resp.decode("utf-8", "replace").split("\n")))
        reply = self.command(f"HELO {self.local_hostname}")
        self.helo_resp = "\n".join(reply.lines).encode()
        return reply

    def upgrade(self, context) -> Reply:
        """STARTTLS; raises SessionError when refused or when the handshake fails."""
        self.step = "STARTTLS reply"
        reply = self.command("STARTTLS")
        if reply.code != 220:
            raise SessionError("STARTTLS", f"refused: {reply}")
        # Bytes the server sent before the handshake are not to be trusted (RFC 3207).
        self._buffer.clear()
        try:
            self.sock = self._handshake(self.sock, context, self._host)
        except SessionError:
            self.close()
            raise
        self.note(f"TLS established: {self.sock.version()} {self.sock.cipher()[0]}")
        self.helo_resp = self.ehlo_resp = None
        self.esmtp_features = {}
        self.does_esmtp = False
        return reply

    def command(self, line: str) -> Reply:
        """Send one command exactly as written and read its reply."""
        verb = line.split(":", 1)[0] if ":" in line else line.split(" ", 1)[0]
        self.step = f"reply to {verb}"
        self.send(self._wire(line))
        return self.read_reply()

    def _wire(self, *commands: str) -> str:
        """Commands as they go out, each refused if it could smuggle in another.

        Arguments are checked long before this, but a CR, LF or NUL inside a command
        (or a character smtplib cannot send) must never reach a server, however it got
        there: one CR LF and "DATA" would turn the check into a spam run.
        """
        for command in commands:
            if not command.isascii() or any(char in command for char in "\r\n\0"):
                raise SessionError(self.step, "refusing to send a command with a CR, LF, "
                                              "NUL or non-ASCII character")
        return "".join(f"{command}\r\n" for command in commands)

    def transaction(self, mail_from: str, rcpt_to: str, exchange: Exchange) -> None:
        """MAIL, RCPT (only if MAIL was accepted, unless pipelining), RSET.

        With PIPELINING (RFC 2920) all three go out in one write; a RCPT after a
        refused MAIL then draws a 503, which is ignored.  Replies go into `exchange`
        as they arrive, so that what the server decided survives a connection that
        dies before the transaction is over.
        """
        mail_cmd = f"MAIL FROM:{mail_from}"
        rcpt_cmd = f"RCPT TO:{rcpt_to}"
        if self.has_extn("pipelining"):
            self.step = "reply to MAIL FROM"
            self.send(self._wire(mail_cmd, rcpt_cmd, "RSET"))
            exchange.mail = self.read_reply()
            self.step = "reply to RCPT TO"
            rcpt = self.read_reply()
            exchange.rcpt = rcpt if 200 <= exchange.mail.code < 300 else None
            self.step = "reply to RSET"
            exchange.rset = self.read_reply()
            if self._buffer:   # more replies than commands: none can be matched to one
                exchange.mail = exchange.rcpt = None
                raise self._unreadable("server answered out of turn")
            if not 200 <= exchange.rset.code < 300:
                # RSET always earns a 250 (RFC 5321 4.1.1.5).  Exim refuses the one past
                # its limit of non-mail commands and hangs up, but a server that answered
                # MAIL twice looks just the same, its extra reply read as RCPT's.  So this
                # round trip proves nothing: the test is tried again on a fresh connection.
                exchange.mail = exchange.rcpt = None
                self.close()
                raise ConnectionLost(self.step, f"RSET answered {exchange.rset}, not 250")
            return
        exchange.mail = self.command(mail_cmd)
        if 200 <= exchange.mail.code < 300:
            exchange.rcpt = self.command(rcpt_cmd)
        exchange.rset = self.command("RSET")

    def goodbye(self) -> None:
        """QUIT politely if the connection is still up; never raise."""
        if self.sock is None:
            return
        try:
            self.command("QUIT")
        except (SessionError, OSError):
            pass
        finally:
            self.close()
