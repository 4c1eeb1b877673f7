"""Hostile and broken servers on loopback: tarpits, liars, hang-ups, non-SMTP services.

Every accepted connection runs its handler in a thread of its own, so a handler is
straight-line code (send, wait, read, hang up) and a tarpit holds only its own thread.
Every line the client sends is recorded per connection, so a test can prove what the
plugin sent, and did not send, on each connection.

`Script` is the usual handler: an SMTP server whose answer to each command is a string
or a callable deciding per line, which can also hang up or fall silent.  `assert_sane`
is what every run of the plugin must show, however the server behaved.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from conftest import PluginRun

# Answers that are not replies: end the connection (politely, or with a TCP reset), or
# keep it open and say nothing.
HANG_UP = "<hang up>"
RESET = "<reset>"
SILENCE = "<silence>"

RELAY_DENIED = "554 5.7.1 Relay access denied"
ACCEPTED = "250 2.1.5 Ok"
TOO_MANY_ERRORS = "421 4.7.0 mx.hostile.test Error: too many errors"

# How often blocked calls look up to see whether the server is stopping.
POLL = 0.05


class Peer:
    """One client connection, seen from the server."""

    def __init__(self, sock: socket.socket, number: int, stopping: threading.Event) -> None:
        self.sock = sock
        self.number = number
        self.stopping = stopping
        self.lines: list[str] = []     # every line the client sent, in order
        self.tls = False
        self.sent = 0                  # bytes sent to the client
        self.errors = 0                # 4xx/5xx replies sent
        self.hung_up = False           # the server ended the connection
        self._buffer = b""
        sock.settimeout(POLL)
        # Replies go out as several small writes: without this, Nagle's algorithm and
        # the client's delayed ACK add 40 ms to every pipelined round trip.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes, trickle: float = 0.0) -> bool:
        """Send all of `data` (a byte at a time with `trickle`); False once the client left."""
        chunks = [data[i:i + 1] for i in range(len(data))] if trickle else [data]
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                if self.stopping.is_set():
                    return False
                try:
                    count = self.sock.send(view)
                except TimeoutError:
                    continue
                except OSError:
                    return False
                view = view[count:]
                self.sent += count
            if trickle and self.stopping.wait(trickle):
                return False
        return True

    def say(self, text: str, trickle: float = 0.0) -> bool:
        """Send one reply; a "\\n" in `text` separates the lines of a multi-line reply."""
        data = "".join(f"{line}\r\n" for line in text.split("\n"))
        return self.send(data.encode("utf-8", "surrogateescape"), trickle)

    def readline(self) -> str | None:
        """The next line from the client, or None when it left or the server stops."""
        while b"\n" not in self._buffer:
            if self.stopping.is_set():
                return None
            try:
                chunk = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\n", 1)
        line = raw.rstrip(b"\r").decode("utf-8", "replace")
        self.lines.append(line)
        return line

    def hold(self) -> None:
        """Keep the connection open and say nothing, until the client leaves."""
        while self.readline() is not None:
            pass

    def hang_up(self) -> None:
        self.hung_up = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def reset(self) -> None:
        """Abort the connection: the client sees ECONNRESET, not an orderly close."""
        self.hung_up = True
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def start_tls(self, context: ssl.SSLContext) -> None:
        self.sock.settimeout(5)
        self.sock = context.wrap_socket(self.sock, server_side=True)
        self.sock.settimeout(POLL)
        self._buffer = b""
        self.tls = True


Handler = Callable[[Peer], None]


class HostileServer:
    """Runs `handler` for every connection to a loopback port, each in its own thread."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1",
                 tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.host = host
        self.tls = tls                 # implicit TLS from the first byte
        self.port = 0
        self.peers: list[Peer] = []
        self._stopping = threading.Event()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> HostileServer:
        self._listener.bind((self.host, 0))
        self._listener.listen(16)
        self._listener.settimeout(POLL)
        self.port = self._listener.getsockname()[1]
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._acceptor.join(timeout=5)   # first, so that no handler starts after this
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()

    @property
    def connections(self) -> list[list[str]]:
        """What the client sent, one list of lines per connection."""
        return [peer.lines for peer in self.peers]

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            peer = Peer(sock, len(self.peers) + 1, self._stopping)
            self.peers.append(peer)
            thread = threading.Thread(target=self._serve, args=(peer,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, peer: Peer) -> None:
        try:
            if self.tls is not None:
                peer.start_tls(self.tls)
            self.handler(peer)
        except OSError:   # ssl.SSLError too: the client went away or failed the handshake
            pass
        finally:
            peer.sock.close()


Answer = str | Callable[[Peer, str], str]


def multiline(code: int, *lines: str) -> str:
    """A multi-line reply as Script takes it: 250-a, 250-b, 250 c."""
    last = len(lines) - 1
    return "\n".join(f"{code}{' ' if i == last else '-'}{line}" for i, line in enumerate(lines))


EHLO = multiline(250, "mx.hostile.test", "PIPELINING", "8BITMIME")
EHLO_NO_PIPELINING = multiline(250, "mx.hostile.test", "8BITMIME")


@dataclass
class Script:
    """An SMTP server whose answer to each command can be anything a server can do."""

    banner: Answer = "220 mx.hostile.test ESMTP"
    ehlo: Answer = EHLO
    helo: Answer = "250 mx.hostile.test"
    mail: Answer = "250 2.1.0 Ok"
    rcpt: Answer = RELAY_DENIED
    rset: Answer = "250 2.0.0 Ok"
    quit: Answer = "221 2.0.0 Bye"
    starttls: Answer = "454 4.7.0 TLS not available due to local problem"
    other: Answer = "502 5.5.2 Error: command not recognized"
    trickle: float = 0.0           # seconds between the bytes of every reply
    max_errors: int | None = None  # after this many error replies, 421 and hang up
    tls: ssl.SSLContext | None = None   # what a 2xx answer to STARTTLS starts

    def __call__(self, peer: Peer) -> None:
        banner = self.banner(peer, "") if callable(self.banner) else self.banner
        if not self._answer(peer, banner):
            return
        while (line := peer.readline()) is not None:
            verb = line.split(":", 1)[0].split(" ", 1)[0].upper()
            answer = {"EHLO": self.ehlo, "HELO": self.helo, "MAIL": self.mail,
                      "RCPT": self.rcpt, "RSET": self.rset, "QUIT": self.quit,
                      "STARTTLS": self.starttls}.get(verb, self.other)
            text = answer(peer, line) if callable(answer) else answer
            if not self._answer(peer, text) or verb == "QUIT":
                return
            if verb == "STARTTLS" and text.startswith("2") and self.tls is not None:
                peer.start_tls(self.tls)

    def _answer(self, peer: Peer, text: str) -> bool:
        """Give one answer; False when the connection is over."""
        if text == HANG_UP:
            peer.hang_up()
            return False
        if text == RESET:
            peer.reset()
            return False
        if text == SILENCE:
            peer.hold()
            return False
        if text[:1] in ("4", "5"):
            if self.max_errors is not None and peer.errors >= self.max_errors:
                peer.say(TOO_MANY_ERRORS, self.trickle)
                peer.hang_up()
                return False
            peer.errors += 1
        return peer.say(text, self.trickle)


def assert_sane(result: PluginRun) -> None:
    """One status line naming the plugin and a state, no traceback, nothing on stderr."""
    assert result.stderr == "", result.stderr
    assert "Traceback" not in result.stdout
    assert re.match(r"OPEN_RELAY (OK|WARNING|CRITICAL|UNKNOWN) - \S", result.status_line), \
        result.stdout
