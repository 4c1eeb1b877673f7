"""The test mailbox (--verify-imap): where a proven relay delivers the test messages.

Cheap to import: imaplib and ssl are loaded only when a mailbox is opened, since an
ordinary check (and --version) must not pay for them.  The password never leaves the
`Secret` it is kept in: not in repr(), not in an error message, not in a transcript.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from .reply import printable

if TYPE_CHECKING:
    import imaplib

    from .session import Deadline

# The header that carries a test message's token (plugin/delivery.py writes it).
TOKEN_HEADER = "X-Open-Relay-Test"
# Between searches while waiting: short at first, since a local chain delivers in well
# under a second and the delay is reported, then at most once a second.
FIRST_POLL_SECONDS = 0.1
LONGEST_POLL_SECONDS = 1.0
# Kept back from the deadline for deleting what was found and logging out.
CLEANUP_SECONDS = 1.0
# Test messages older than this (by their Date) are leftovers of earlier runs that
# arrived too late; no running check can still be waiting for them (-t is at most an hour).
STALE_DAYS = 2
_UID = re.compile(rb"\bUID (\d+)")
_TOKEN = re.compile(rb"^" + TOKEN_HEADER.encode() + rb":[ \t]*([0-9a-f]+\.[0-9]+)",
                    re.IGNORECASE | re.MULTILINE)
_PRINTABLE_ASCII = re.compile(r"^[\x20-\x7e]+$")
_PORTS = {"imaps": 993, "imap": 143}


@dataclass(frozen=True)
class Secret:
    """A password: repr() shows nothing, so it cannot leak through a dataclass repr."""

    value: str = field(repr=False)


@dataclass(frozen=True)
class MailboxURL:
    """imaps://USER@HOST[:PORT]/MAILBOX (TLS from the first byte) or imap:// (STARTTLS)."""

    scheme: str
    user: str
    host: str
    port: int
    mailbox: str

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.mailbox}"


def parse_mailbox_url(text: str) -> MailboxURL:
    """The URL checked as a whole; ValueError says what is wrong (never echoing a password)."""
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in _PORTS:
        raise ValueError("must start with imaps:// or imap:// (STARTTLS)")
    if parts.password is not None:
        raise ValueError("must not hold a password: use --imap-password-file or "
                         "--imap-password-env")
    if not parts.username:
        raise ValueError("names no user (imaps://USER@HOST/MAILBOX)")
    if not parts.hostname:
        raise ValueError("names no host")
    try:
        port = parts.port or _PORTS[scheme]
    except ValueError as exc:
        raise ValueError("has a bad port") from exc
    mailbox = unquote(parts.path.lstrip("/")) or "INBOX"
    user = unquote(parts.username)
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    # Mailbox names outside printable ASCII need IMAP's modified UTF-7, and a CR or LF
    # would end the IMAP command early: neither is worth supporting here.
    for what, value in (("mailbox", mailbox), ("user", user)):
        if not _PRINTABLE_ASCII.match(value):
            raise ValueError(f"the {what} name must be printable ASCII")
    return MailboxURL(scheme, user, parts.hostname, port, mailbox)


class MailboxError(Exception):
    """The mailbox could not be used; the text says which step failed and why."""


@dataclass
class Arrival:
    token: str
    uid: bytes
    delay: float        # seconds from the server taking the message to finding it here
    headers: str        # the header block as stored in the mailbox (Received chain)


class Mailbox:
    """One IMAP connection to the test mailbox; every step bounded by the check's deadline."""

    def __init__(self, url: MailboxURL, password: Secret, deadline: Deadline) -> None:
        self.url = url
        self.password = password
        self.deadline = deadline
        self.imap: imaplib.IMAP4 | None = None
        self.capabilities: tuple[str, ...] = ()
        self.found: dict[str, Arrival] = {}
        self.searched_at = 0.0    # time.monotonic() of the last completed search

    def open(self) -> None:
        """Connect, TLS, log in and select the mailbox; MailboxError if any step fails."""
        import imaplib
        import ssl

        url = self.url
        context = ssl.create_default_context()
        timeout = self._remaining("connect")
        try:
            if url.scheme == "imaps":
                self.imap = imaplib.IMAP4_SSL(url.host, url.port, ssl_context=context,
                                              timeout=timeout)
            else:
                self.imap = imaplib.IMAP4(url.host, url.port, timeout=timeout)
        except (imaplib.IMAP4.error, OSError) as exc:
            raise MailboxError(f"connect to {url.host} port {url.port}: "
                               f"{self._words(exc)}") from exc
        if url.scheme == "imap":
            # The password never goes over plain text: no STARTTLS, no login.
            self._call("STARTTLS", self.imap.starttls, context)
        # imaplib quotes the password but sends the user name as it is.
        self._call("login", self.imap.login, _quote(url.user), self.password.value)
        self.capabilities = tuple(self._call("CAPABILITY", self.imap.capability)[0]
                                  .decode("ascii", "replace").upper().split())
        self._call(f"SELECT {url.mailbox}", self.imap.select, _quote(url.mailbox))

    def wait_for(self, run_id: str, taken: dict[str, float], until: float) -> None:
        """Search for this run's messages until all `taken` (token → time.monotonic() the
        server took it) have arrived or `until` (time.monotonic()) has come.

        Arrivals go into `found` as they are seen, so that a connection that dies on
        the way keeps what was already confirmed.
        """
        pause = FIRST_POLL_SECONDS
        while True:
            self._call("NOOP", self._imap().noop)   # lets the server report new mail
            for uid, headers in self._fetch_headers(self._search("HEADER", TOKEN_HEADER,
                                                                 run_id)):
                match = _TOKEN.search(headers)
                token = match.group(1).decode() if match else ""
                if token in taken and token not in self.found:
                    self.found[token] = Arrival(token, uid, time.monotonic() - taken[token],
                                                _header_text(headers))
            now = self.searched_at = time.monotonic()
            if len(self.found) == len(taken) or now >= until:
                return
            time.sleep(min(pause, until - now))
            pause = min(pause * 2, LONGEST_POLL_SECONDS)

    def delete(self) -> None:
        """Delete the test messages found, and leftovers of earlier runs."""
        import datetime

        before = datetime.date.today() - datetime.timedelta(days=STALE_DAYS)
        stale = self._search("HEADER", TOKEN_HEADER, '""', "SENTBEFORE",
                             before.strftime("%d-%b-%Y"))
        uids = sorted({*(arrival.uid for arrival in self.found.values()), *stale})
        if not uids:
            return
        uid_set = b",".join(uids).decode()
        self._call("STORE", self._imap().uid, "STORE", uid_set, "+FLAGS.SILENT", r"(\Deleted)")
        if "UIDPLUS" in self.capabilities:
            self._call("EXPUNGE", self._imap().uid, "EXPUNGE", uid_set)
        else:
            # Without UIDPLUS only a plain EXPUNGE exists; in a mailbox kept for these
            # tests (README) nothing else is marked deleted.
            self._call("EXPUNGE", self._imap().expunge)

    def close(self) -> None:
        """Log out if still connected; never raises (the verdict is already known)."""
        import imaplib

        if self.imap is None:
            return
        try:
            self.imap.sock.settimeout(max(self.deadline.remaining(), 0.1))
            self.imap.logout()
        except (imaplib.IMAP4.error, OSError):
            with contextlib.suppress(OSError):
                self.imap.shutdown()
        self.imap = None

    # -- helpers ------------------------------------------------------------------------

    def _imap(self) -> imaplib.IMAP4:
        if self.imap is None:
            raise MailboxError("not connected")
        return self.imap

    def _search(self, *criteria: str) -> list[bytes]:
        data = self._call("SEARCH", self._imap().uid, "SEARCH", *criteria)
        return [uid for line in data if line for uid in line.split()]

    def _fetch_headers(self, uids: list[bytes]) -> list[tuple[bytes, bytes]]:
        known = {arrival.uid for arrival in self.found.values()}
        wanted = [uid for uid in uids if uid not in known]
        if not wanted:
            return []
        data = self._call("FETCH", self._imap().uid, "FETCH", b",".join(wanted).decode(),
                          "(BODY.PEEK[HEADER])")
        found = []
        for item in data:
            if isinstance(item, tuple) and (match := _UID.search(item[0])):
                found.append((match.group(1), item[1]))
        return found

    def _call(self, step: str, method, *args):
        """One IMAP command under the deadline; its data, or MailboxError naming the step."""
        import imaplib

        imap = self._imap()
        imap.sock.settimeout(self._remaining(step))
        try:
            kind, data = method(*args)
        except (imaplib.IMAP4.error, OSError) as exc:
            raise MailboxError(f"{step} failed: {self._words(exc)}") from exc
        if kind != "OK":
            raise MailboxError(f"{step} failed: {self._words(data)}")
        return data

    def _remaining(self, step: str) -> float:
        remaining = self.deadline.remaining()
        if remaining <= 0:
            raise MailboxError(f"{step}: no answer from {self.url.host} within "
                               f"{self.deadline.seconds:g} s")
        return remaining

    def _words(self, what: object) -> str:
        """Server or library text made printable, with the password cut out should a
        server echo the command back."""
        if isinstance(what, OSError):
            what = what.strerror or str(what)
        elif isinstance(what, Exception):
            # imaplib's errors carry the server's words as bytes.
            what = what.args[0] if len(what.args) == 1 else str(what)
        if isinstance(what, list):
            what = b" ".join(item for item in what if isinstance(item, bytes))
        if isinstance(what, bytes):
            what = what.decode("utf-8", "replace")
        text = str(what) or "no reason given"
        return printable(text.replace(self.password.value, "***"))


def _quote(text: str) -> str:
    """An IMAP quoted string (RFC 3501 section 4.3)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _header_text(headers: bytes) -> str:
    return headers.decode("utf-8", "replace").replace("\r\n", "\n").rstrip("\n")
