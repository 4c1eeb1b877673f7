"""One target's battery, over as many connections as the server makes us use.

Up to a few connections run at once, each with the tests it claimed before
connecting; a test whose connection died is retried once on a fresh one.  What the
server answered is kept as it arrived: an accepted relay survives whatever follows.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import nagiosplugin

from .battery import Attempt, Envelope, RelayTest, address_literal, render
from .classify import Outcome, judge
from .reply import Reply
from .session import (
    ConnectionLost,
    Deadline,
    DeadlineExpired,
    Exchange,
    NotSMTP,
    RelaySession,
    SessionError,
    Transcript,
    UntrustedCertificate,
)
from .settings import Settings
from .targets import (
    Target,
    delivered_locally,
    derive_domain,
    ip_version,
    local_recipient_message,
)

if TYPE_CHECKING:
    from .proof import TargetProof

# Postfix slows a client down after 10 errors on one connection (smtpd_soft_error_limit)
# and drops it at 20; a test costs at most two error replies.  Reconnect before that.
ERRORS_PER_CONNECTION = 8
# Tests per connection before a fresh one: Exim allows 10 non-mail commands (each
# test ends with RSET), Postfix 10 errors before it slows down.
TESTS_PER_CONNECTION = 7
# Connections one target may have open at once: enough that a slow banner is waited
# for once rather than once per connection, few enough never to look like an attack.
LANES_PER_TARGET = 4
# A test whose connection dies under it is tried once more on a fresh connection.
TRIES_PER_TEST = 2
# Connections in a row that decide nothing before the battery is given up.
FRUITLESS_CONNECTIONS = 3


@dataclass
class AttemptResult:
    attempt: Attempt
    outcome: Outcome
    reason: str
    reached_rcpt: bool = False
    mail: Reply | None = None
    rcpt: Reply | None = None
    connection: int = 0

    @property
    def decisive_reply(self) -> Reply | None:
        return self.rcpt if self.rcpt is not None else self.mail


@dataclass
class TargetReport:
    target: Target
    results: list[AttemptResult] = field(default_factory=list)
    transcripts: list[Transcript] = field(default_factory=list)
    banner: Reply | None = None
    server_name: str = ""
    envelope: Envelope | None = None
    failure: SessionError | None = None
    notes: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    proof: TargetProof | None = None    # --deliver/--evidence-dir, for accepted attempts

    def with_outcome(self, outcome: Outcome) -> list[AttemptResult]:
        return [result for result in self.results if result.outcome is outcome]


class BatteryRun:
    """One pass of the battery over as many connections as the server makes us use."""

    def __init__(self, settings: Settings, target: Target, deadline: Deadline) -> None:
        self.settings = settings
        self.target = target
        self.deadline = deadline
        self.report = TargetReport(target)
        self.tls_context = None
        self.starttls = settings.starttls
        # Shared by the connections (lanes) that run this target's battery at once.
        self._lock = threading.Lock()
        self._queue: deque[RelayTest] = deque()
        self._retry: deque[RelayTest] = deque()     # tests whose connection died
        self._tries: dict[str, int] = {}
        self._numbers = itertools.count(1)
        self._in_a_row = 0          # connections in a row that decided nothing
        self._given_up = False
        self._envelope_cache: Envelope | None = None
        self._error: Exception | None = None

    def run(self) -> TargetReport:
        tests = self.settings.tests
        self._queue.extend(tests)
        lanes = min(LANES_PER_TARGET, -(-len(tests) // TESTS_PER_CONNECTION)) or 1
        if lanes == 1:
            self._lane()
        else:
            # A slow banner is then waited for once, not once per connection.
            threads = [threading.Thread(target=self._lane, name=f"lane-{index}")
                       for index in range(lanes)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        if self._error is not None:
            raise self._error
        envelope = self._envelope_cache or self._envelope()
        why = describe_failure(self.report.failure, self.target, self.deadline.seconds)
        for attempt in render((*self._retry, *self._queue), envelope):
            self.report.results.append(
                AttemptResult(attempt, Outcome.UNTESTED, f"not tried: {why}"))
        order = {test.id: index for index, test in enumerate(tests)}
        self.report.results.sort(key=lambda result: order[result.attempt.test.id])
        self.report.transcripts.sort(key=lambda transcript: transcript.connection)
        self.report.notes[:] = dict.fromkeys(self.report.notes)
        self.report.elapsed = self.deadline.elapsed()
        return self.report

    def _lane(self) -> None:
        """One connection after another, each with the tests it claimed beforehand."""
        try:
            while batch := self._claim():
                with self._lock:
                    number = next(self._numbers)
                try:
                    session = self._open(number)
                except SessionError as exc:
                    self._hand_back(batch)
                    self._fruitless(exc)
                    # A hang-up (not a 421) may be a passing fault: try a fresh connection.
                    if not (isinstance(exc, ConnectionLost) and exc.reply is None):
                        return
                    continue
                decided = self._run_some(session, number, self._shared_envelope(), batch)
                session.goodbye()
                self._hand_back(batch)
                if decided:
                    with self._lock:
                        self._in_a_row = 0
                elif self._fruitless(self.report.failure):
                    return
                failure = self.report.failure
                if failure is not None and not isinstance(failure, ConnectionLost):
                    with self._lock:
                        self._given_up = True
        except Exception as exc:   # re-raised in run(): a thread must not swallow it
            self._error = exc

    def _claim(self) -> deque[RelayTest]:
        """Tests for one connection, claimed before connecting so that no lane opens a
        connection with nothing left to do.  A test whose connection died comes first:
        it is retried only on a fresh connection."""
        with self._lock:
            batch: deque[RelayTest] = deque()
            if self._given_up:
                return batch
            if self._retry:
                batch.append(self._retry.popleft())
            while self._queue and len(batch) < TESTS_PER_CONNECTION:
                batch.append(self._queue.popleft())
            return batch

    def _hand_back(self, batch: deque[RelayTest]) -> None:
        """Tests a connection did not get to go back to the front of the queue."""
        with self._lock:
            self._queue.extendleft(reversed(batch))
            batch.clear()

    def _fruitless(self, failure: SessionError | None) -> bool:
        """Count a connection that decided nothing; True when the battery gives up."""
        with self._lock:
            if failure is not None:
                self.report.failure = failure
            self._in_a_row += 1
            if self._in_a_row >= FRUITLESS_CONNECTIONS:
                self._given_up = True
            return self._given_up

    def _shared_envelope(self) -> Envelope:
        with self._lock:
            if self._envelope_cache is None:
                self._envelope_cache = self._envelope()
            return self._envelope_cache

    def _open(self, connection: int) -> RelaySession:
        session = self._connect(connection)
        if self.settings.implicit_tls or self.starttls == "never":
            return session
        if not session.has_extn("starttls"):
            if self.starttls == "always":
                session.goodbye()
                raise SessionError("STARTTLS", "not offered by the server")
            return session
        try:
            session.upgrade(self._context())
        except (DeadlineExpired, UntrustedCertificate):
            # Asked to verify, a server that fails it is not tested in plain text instead.
            raise
        except SessionError as exc:
            session.goodbye()
            if self.starttls == "always":
                raise
            # A spammer would carry on in plain text, so the check does too.
            self.starttls = "never"
            self.report.notes.append(f"STARTTLS failed ({exc.reason}); tested without TLS")
            return self._connect(connection)
        reply = session.greet()
        if reply.code != 250:
            session.goodbye()
            raise SessionError("EHLO after STARTTLS", f"refused: {reply}")
        return session

    def _connect(self, connection: int) -> RelaySession:
        """A fresh connection, greeted, before any STARTTLS."""
        transcript = Transcript(connection, self.target.address)
        self.report.transcripts.append(transcript)
        session = RelaySession(self.settings.helo, self.deadline, transcript,
                               self._context() if self.settings.implicit_tls else None,
                               self._tls_name())
        banner = session.open(self.target.address, self.target.port)
        if banner.code != 220:
            session.goodbye()
            raise SessionError("banner", f"server refuses service: {banner}")
        if self.report.banner is None:
            self.report.banner = banner
        greeting = session.greet()
        if greeting.code != 250:
            session.goodbye()
            raise SessionError("HELO", f"refused: {greeting}")
        if not self.report.server_name:
            self.report.server_name = _announced_name(banner) or _announced_name(greeting)
        return session

    def _run_some(self, session: RelaySession, connection: int, envelope: Envelope,
                  batch: deque[RelayTest]) -> int:
        """Run the batch on this connection until it is spent; return how many were
        decided.  What is left in the batch was not tried."""
        decided = errors = 0
        while batch and errors + 2 <= ERRORS_PER_CONNECTION:
            test = batch.popleft()
            attempt = render((test,), envelope)[0]
            exchange = Exchange()
            try:
                session.transaction(attempt.mail_from, attempt.rcpt_to, exchange)
            except SessionError as exc:
                self.report.failure = exc
                judgement = judge(exchange.mail, exchange.rcpt)
                if judgement.outcome is not Outcome.UNTESTED:
                    # The server had decided before the connection died (at RSET, say):
                    # that answer stands, an accepted relay above all.
                    self._record(attempt, judgement.outcome, judgement.reason, connection,
                                 exchange.mail, exchange.rcpt, judgement.reached_rcpt)
                    return decided + 1
                self._retry_or_give_up(test, attempt, exc, connection)
                return decided
            judgement = judge(exchange.mail, exchange.rcpt)
            self._record(attempt, judgement.outcome, judgement.reason, connection,
                         exchange.mail, exchange.rcpt, judgement.reached_rcpt)
            self.report.failure = None
            decided += 1
            errors += sum(1 for reply in (exchange.mail, exchange.rcpt, exchange.rset)
                          if reply and reply.code >= 400)
            if exchange.rset is None or exchange.rset.code != 250:
                break
        return decided

    def _retry_or_give_up(self, test: RelayTest, attempt: Attempt, exc: SessionError,
                          connection: int) -> None:
        """A test whose connection failed under it goes back to the queue, once."""
        lost = isinstance(exc, ConnectionLost)
        with self._lock:
            if lost:
                self._tries[test.id] = self._tries.get(test.id, 0) + 1
            # After a deadline or a hostile reply no lane goes on: the test stays
            # queued and is reported as not tried.
            if not lost:
                self._queue.appendleft(test)
                return
            if self._tries[test.id] < TRIES_PER_TEST:
                self._retry.append(test)
                return
        # Given up, not decided: a server that drops every test must run out of
        # fruitless connections, not get two per test.
        outcome = Outcome.TEMPFAIL if exc.reply else Outcome.UNTESTED
        self._record(attempt, outcome, exc.reason, connection)

    def _record(self, attempt: Attempt, outcome: Outcome, reason: str, connection: int,
                mail: Reply | None = None, rcpt: Reply | None = None,
                reached_rcpt: bool = False) -> None:
        self.report.results.append(AttemptResult(
            attempt, outcome, reason, reached_rcpt, mail, rcpt, connection))

    def _envelope(self) -> Envelope:
        settings = self.settings
        literal = address_literal(self.target.address)
        if ip_version(self.target.name) is None:
            host = self.target.name.rstrip(".").lower()
        else:
            host = self.report.server_name or literal
        domain = settings.target_domain or self.target.domain or derive_domain(host)
        envelope = Envelope(settings.sender, settings.recipient, host, domain, literal,
                            settings.foreign_literal)
        if delivered_locally(settings.recipient, host, domain, literal):
            raise nagiosplugin.CheckError(local_recipient_message(settings.recipient))
        self.report.envelope = envelope
        return envelope

    def _context(self):
        if self.tls_context is None:
            import ssl  # only when TLS is used: it is the costliest import

            if self.settings.tls_verify:
                self.tls_context = ssl.create_default_context()
            else:
                self.tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                self.tls_context.check_hostname = False
                self.tls_context.verify_mode = ssl.CERT_NONE
        return self.tls_context

    def _tls_name(self) -> str | None:
        name = self.target.name
        return None if ip_version(name) is not None else name


def _announced_name(reply: Reply) -> str:
    """The host name a server gives itself: the first word of its banner or EHLO reply.

    The name goes into the commands the battery sends, so it must be a plain ASCII
    host name: str.isalnum() alone lets "exämple" through, which smtplib cannot send.
    """
    words = reply.lines[0].split() if reply.lines else []
    name = words[0].rstrip(".").lower() if words else ""
    if "." in name and name.isascii() and len(name) <= 253 and ip_version(name) is None \
            and all(label and len(label) <= 63 and label.replace("-", "").isalnum()
                    for label in name.split(".")):
        return name
    return ""


def describe_failure(failure: SessionError | None, target: Target, seconds: float) -> str:
    if failure is None:
        return "the server made no progress on several connections"
    if isinstance(failure, DeadlineExpired):
        if failure.step == "connect":
            return f"no connection to {target.address} within {seconds:g} s"
        if failure.step == "TLS handshake":
            return f"TLS handshake with {target.address} unfinished after {seconds:g} s"
        return f"no {failure.step} from {target.address} within {seconds:g} s"
    if isinstance(failure, NotSMTP):
        where = "" if failure.step == "banner" else f" (at {failure.step})"
        return f"not an SMTP server: {failure.reason}{where}"
    if failure.step == "STARTTLS":
        return f"STARTTLS {failure.reason}"
    if failure.step in ("connect", "banner", "TLS handshake"):
        return f"{failure.step}: {failure.reason}"
    return f"{failure.reason} (at {failure.step})"
