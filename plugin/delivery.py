"""--deliver: the test message, and the DATA phase that hands it to an accepting server.

After a target's battery, one fresh connection (set up as the battery's were, TLS
included) repeats each accepted MAIL FROM / RCPT TO exactly as the battery sent them
and only then sends DATA with one short, clearly labelled message.  If the server
does not accept the same envelope again, no DATA is sent.  Everything is recorded in
the target's transcripts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

from .battery import Attempt
from .mailbox import TOKEN_HEADER
from .reply import Reply
from .runner import AttemptResult, BatteryRun, TargetReport, describe_failure
from .session import Deadline, RelaySession, SessionError
from .settings import Settings


class Handover(StrEnum):
    TAKEN = "taken"        # 250 after the message: the server took responsibility for it
    REFUSED = "refused"    # a permanent refusal (5xx) of the envelope or of the message
    FAILED = "failed"      # a temporary refusal, a lost connection, the deadline: no answer
    SKIPPED = "skipped"    # not sent: --max-messages reached


@dataclass
class Delivery:
    """The test message for one accepted attempt, and what became of it."""

    result: AttemptResult
    token: str
    status: Handover = Handover.FAILED
    step: str = ""               # where it ended: "end of data", "RCPT TO", ...
    reply: Reply | None = None   # the server's last word on it
    reason: str = ""             # why, when there was no reply
    taken_at: float = 0.0        # time.monotonic() when the server took it
    taken_utc: float = 0.0       # time.time() of the same moment, for the evidence
    connection: int = 0          # the transcript it is in

    @property
    def attempt(self) -> Attempt:
        return self.result.attempt


class DeliveryRun(BatteryRun):
    """The battery's connection set-up, then MAIL, RCPT, DATA per accepted attempt."""

    def __init__(self, settings: Settings, report: TargetReport, deadline: Deadline) -> None:
        super().__init__(settings, report.target, deadline)
        # The delivery connection joins the battery's transcripts (and its evidence).
        self.report = report

    def deliver(self, deliveries: list[Delivery]) -> None:
        try:
            session = self._open(len(self.report.transcripts) + 1)
        except SessionError as exc:
            why = describe_failure(exc, self.target, self.deadline.seconds)
            for delivery in deliveries:
                delivery.reason = f"no delivery connection: {why}"
            return
        session.note("delivery phase (--deliver): one test message per accepted attempt")
        try:
            for delivery in deliveries:
                delivery.connection = session.transcript.connection
                self._send(session, delivery)
        except SessionError as exc:
            why = describe_failure(exc, self.target, self.deadline.seconds)
            for delivery in deliveries:
                if delivery.status is Handover.FAILED and not delivery.reason:
                    delivery.reason = why
        finally:
            session.goodbye()

    def _send(self, session: RelaySession, delivery: Delivery) -> None:
        attempt = delivery.attempt
        for step, command, wanted in (("MAIL FROM", f"MAIL FROM:{attempt.mail_from}", 250),
                                      ("RCPT TO", f"RCPT TO:{attempt.rcpt_to}", 250),
                                      ("DATA", "DATA", 354)):
            reply = session.command(command)
            # 251 (will forward) is as good as 250 at RCPT; DATA must say 354.
            if reply.code != wanted and not (wanted == 250 and 200 <= reply.code < 300):
                self._settle(delivery, step, reply)
                session.command("RSET")
                return
        message = compose(self.settings, self.report, attempt, delivery.token)
        session.step = "reply to end of data"
        session.send(message)
        reply = session.read_reply()
        if 200 <= reply.code < 300:
            delivery.status = Handover.TAKEN
            delivery.taken_at, delivery.taken_utc = time.monotonic(), time.time()
        self._settle(delivery, "end of data", reply)

    @staticmethod
    def _settle(delivery: Delivery, step: str, reply: Reply) -> None:
        delivery.step, delivery.reply = step, reply
        if reply.code >= 500:
            delivery.status = Handover.REFUSED


def compose(settings: Settings, report: TargetReport, attempt: Attempt, token: str) -> bytes:
    """The test message: plain ASCII text, headers that say what it is, no attachment."""
    from datetime import UTC, datetime
    from email.utils import format_datetime

    now = datetime.now(UTC)
    target = report.target
    server = f"{target.label} port {target.port}"
    test = attempt.test
    lines = [
        f"From: check_open_relay <{settings.sender}>",
        f"To: <{settings.recipient}>",
        f"Subject: Open relay test: {target.label} relayed {test.id} [{token}]",
        f"Date: {format_datetime(now)}",
        f"Message-ID: <{token}.open-relay-test@{settings.helo}>",
        f"{TOKEN_HEADER}: {token}",
        f"X-Open-Relay-Test-Server: {server}",
        f"X-Open-Relay-Test-Form: {test.id}",
        "Auto-Submitted: auto-generated",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
        "",
        "This is an automatic open relay test by check_open_relay, a monitoring check.",
        "",
        f"The mail server {server} accepted mail from an outside",
        "sender for an outside recipient, with this envelope:",
        f"  MAIL FROM:{attempt.mail_from}",
        f"  RCPT TO:{attempt.rcpt_to}",
        f"Test form: {test.id} ({test.purpose})",
        f"Token: {token}",
        f"Sent: {now:%Y-%m-%d %H:%M:%S} UTC",
        "",
        "It is meant for a test mailbox that the check empties.  If it reached you",
        "anywhere else, please tell the postmaster of the server named above.",
    ]
    # Dot-stuffing (RFC 5321 section 4.5.2); none of these lines should need it.
    body = "".join(f"{'.' if line.startswith('.') else ''}{line}\r\n" for line in lines)
    return f"{body}.\r\n".encode("ascii", "replace")
