"""--deliver, --verify-imap, --evidence-dir: from an accepted RCPT to proof, and a record.

An accepted RCPT is strong evidence but no proof: some servers accept everything and
then bounce or discard it.  prove() runs in the Resource after the battery and before
anything is judged: the mailbox login (so that no message is sent that could not be
found and deleted), the test messages, the wait for them, then the evidence files.
What it learns goes into each TargetReport's `proof`; verdict.py asks judge_proof()
for the state and proof_lines() for the long output.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

import nagiosplugin

from .classify import Outcome
from .delivery import Delivery, DeliveryRun, Handover
from .evidence import EvidenceError, write_evidence
from .mailbox import CLEANUP_SECONDS, Arrival, Mailbox, MailboxError
from .reply import printable
from .runner import AttemptResult, TargetReport
from .session import Deadline
from .settings import Settings
from .targets import Problem, TargetPlan

UNCONFIRMED_STATES = {"ok": nagiosplugin.Ok, "warning": nagiosplugin.Warn,
                      "critical": nagiosplugin.Critical}


@dataclass
class TargetProof:
    """What the test messages showed about one target's accepted attempts."""

    unconfirmed_state: str = "warning"
    deliveries: list[Delivery] = field(default_factory=list)    # battery order
    arrivals: dict[str, Arrival] = field(default_factory=dict)   # token → found in the mailbox
    mailbox: str = ""             # the --verify-imap mailbox as shown; "" without one
    mailbox_error: str = ""
    searched_at: float = 0.0      # time.monotonic() of the last search; 0: never searched
    evidence_path: str = ""
    evidence_error: str = ""

    def delivery_for(self, result: AttemptResult) -> Delivery | None:
        return next((delivery for delivery in self.deliveries if delivery.result is result),
                    None)

    def with_status(self, status: Handover) -> list[Delivery]:
        return [delivery for delivery in self.deliveries if delivery.status is status]

    @property
    def confirmed(self) -> list[Delivery]:
        return [delivery for delivery in self.deliveries if delivery.token in self.arrivals]

    def waited(self, delivery: Delivery) -> float:
        """How long the mailbox was searched for a message the server took."""
        return max(self.searched_at - delivery.taken_at, 0.0)

    def words(self, delivery: Delivery) -> str:
        """What became of one test message, for people."""
        reply = f": {delivery.reply}" if delivery.reply is not None else ""
        if delivery.token in self.arrivals:
            return f"relay confirmed: delivered in {seconds(self.arrivals[delivery.token].delay)}"
        if delivery.status is Handover.TAKEN:
            if self.searched_at:
                return f"accepted but not delivered within {seconds(self.waited(delivery))}"
            if self.mailbox_error:
                return f"taken for delivery{reply}; not verified (mailbox failed)"
            return f"taken for delivery{reply} (not verified: no --verify-imap)"
        if delivery.status is Handover.REFUSED:
            return f"refused at {delivery.step}{reply}"
        if delivery.status is Handover.SKIPPED:
            return f"not sent: {delivery.reason}"
        if delivery.reply is not None:
            return f"not sent: {delivery.step} answered {delivery.reply}"
        return f"not sent: {printable(delivery.reason)}"

    def finding(self, accepted: int, total: int) -> str:
        """One line for the evidence file."""
        found = f"accepted {accepted} of {total} relay attempts at RCPT TO"
        if self.confirmed:
            return f"{found}; relay confirmed: {messages(len(self.confirmed))} delivered"
        taken = self.with_status(Handover.TAKEN)
        if taken and self.searched_at:
            return f"{found}; {messages(len(taken))} taken but not delivered"
        if taken:
            return f"{found}; {messages(len(taken))} taken for delivery"
        return found


def prove(settings: Settings, plan: TargetPlan, reports: list[TargetReport],
          deadline: Deadline) -> list[nagiosplugin.Metric]:
    """Deliver, verify and record for every target with accepted attempts; the metrics."""
    started = time.time() - deadline.elapsed()
    leaking = [report for report in reports if report.with_outcome(Outcome.ACCEPTED)]
    for report in leaking:
        report.proof = TargetProof(settings.unconfirmed_state)
    run_id = secrets.token_hex(8)
    mailbox = _open_mailbox(settings, plan, leaking, deadline)
    # With --verify-imap, a mailbox that cannot be read means no message is sent: it
    # could be neither found nor deleted, and would prove nothing.
    if settings.deliver and (mailbox is not None or settings.verify_imap is None):
        _deliver(settings, leaking, run_id, deadline)
    if mailbox is not None:
        _verify(settings, plan, mailbox, leaking, run_id, deadline)
    if settings.evidence_dir is not None:
        for report in leaking:
            proof = report.proof
            try:
                path = write_evidence(settings.evidence_dir, settings, plan, report, proof,
                                      started)
            except EvidenceError as exc:
                proof.evidence_error = str(exc)
            else:
                proof.evidence_path = str(path)
    return _metrics(settings, leaking) if settings.deliver else []


def _open_mailbox(settings: Settings, plan: TargetPlan, leaking: list[TargetReport],
                  deadline: Deadline) -> Mailbox | None:
    """The mailbox, logged in.  Opened even when nothing needs proof this time, so that
    a wrong password shows on the first run, not on the day a relay opens."""
    if settings.verify_imap is None or settings.imap_password is None:
        return None
    mailbox = Mailbox(settings.verify_imap, settings.imap_password, deadline)
    try:
        mailbox.open()
    except MailboxError as exc:
        mailbox.close()
        _mailbox_failed(plan, leaking, f"mailbox {settings.verify_imap}: {exc}")
        return None
    for report in leaking:
        report.proof.mailbox = str(settings.verify_imap)
    return mailbox


def _deliver(settings: Settings, leaking: list[TargetReport], run_id: str,
             deadline: Deadline) -> None:
    """One test message per accepted attempt, at most --max-messages in all."""
    budget = settings.max_messages
    number = 0
    for report in leaking:
        pending = []
        for result in report.with_outcome(Outcome.ACCEPTED):
            number += 1
            delivery = Delivery(result, f"{run_id}.{number}")
            if budget > 0:
                budget -= 1
                pending.append(delivery)
            else:
                delivery.status = Handover.SKIPPED
                delivery.reason = f"--max-messages {settings.max_messages} reached"
            report.proof.deliveries.append(delivery)
        if pending:
            DeliveryRun(settings, report, deadline).deliver(pending)


def _verify(settings: Settings, plan: TargetPlan, mailbox: Mailbox,
            leaking: list[TargetReport], run_id: str, deadline: Deadline) -> None:
    """Wait for the messages the servers took, then delete them (and old leftovers)."""
    taken = {delivery.token: delivery.taken_at for report in leaking
             for delivery in report.proof.with_status(Handover.TAKEN)}
    try:
        if taken:
            until = min(time.monotonic() + settings.verify_wait,
                        deadline.end - CLEANUP_SECONDS)
            mailbox.wait_for(run_id, taken, until)
        mailbox.delete()
    except MailboxError as exc:
        _mailbox_failed(plan, leaking, f"mailbox {settings.verify_imap}: {exc}")
    finally:
        mailbox.close()
    for report in leaking:
        proof = report.proof
        proof.searched_at = mailbox.searched_at
        proof.arrivals = {delivery.token: mailbox.found[delivery.token]
                          for delivery in proof.deliveries if delivery.token in mailbox.found}


def _mailbox_failed(plan: TargetPlan, leaking: list[TargetReport], error: str) -> None:
    for report in leaking:
        report.proof.mailbox_error = error
    if not leaking:
        # No target to carry it: the mailbox becomes an item that could not be used,
        # which judge_targets() reports as UNKNOWN like a name that did not resolve.
        plan.problems.append(Problem("--verify-imap", error, fatal=True))


def _metrics(settings: Settings, leaking: list[TargetReport]) -> list[nagiosplugin.Metric]:
    proofs = [report.proof for report in leaking]
    taken = sum(len(proof.with_status(Handover.TAKEN)) for proof in proofs)
    delays = [proof.arrivals[delivery.token].delay for proof in proofs
              for delivery in proof.confirmed]
    metrics = [nagiosplugin.Metric("messages", taken, min=0, max=settings.max_messages,
                                   context="count")]
    if settings.verify_imap is not None:
        metrics.append(nagiosplugin.Metric("confirmed", len(delays), min=0, max=taken,
                                           context="count"))
    if delays:
        metrics.append(nagiosplugin.Metric("delivery_delay", round(max(delays), 3), uom="s",
                                           min=0, context="count"))
    return metrics


def judge_proof(proof: TargetProof, label: str, accepted: int, total: int,
                ids: str) -> tuple[nagiosplugin.state.ServiceState, str] | None:
    """The state and status words for a target whose accepted attempts were put to the
    proof; None where the test messages showed nothing either way (none could be sent),
    so that the accepted RCPT stands as it would without --deliver."""
    relayed = f"{label} relayed {accepted} of {total} attempts ({ids})"
    confirmed = proof.confirmed
    if confirmed:
        delay = max(proof.arrivals[delivery.token].delay for delivery in confirmed)
        return nagiosplugin.Critical, (f"{relayed}; relay confirmed: "
                                       f"{messages(len(confirmed))} delivered in {seconds(delay)}")
    not_proven = f"{label} accepted {accepted} of {total} attempts at RCPT ({ids})"
    if proof.mailbox_error:
        return nagiosplugin.Unknown, f"{not_proven}, not proven: {proof.mailbox_error}"
    taken = proof.with_status(Handover.TAKEN)
    if taken and not proof.searched_at:   # --deliver without --verify-imap
        return nagiosplugin.Critical, f"{relayed}; {messages(len(taken))} taken for delivery"
    refused = proof.with_status(Handover.REFUSED)
    if not (taken or refused):
        return None
    parts = []
    if taken:
        waited = min(proof.waited(delivery) for delivery in taken)
        parts.append(f"{messages(len(taken))} not delivered within {seconds(waited)}")
    if refused:
        parts.append(f"{messages(len(refused))} refused")
    return (UNCONFIRMED_STATES[proof.unconfirmed_state],
            f"{not_proven}, but not delivered: {', '.join(parts)}")


def proof_lines(proof: TargetProof) -> list[str]:
    """The long output: one line per test message, then the mailbox and evidence notes."""
    out: list[str] = []
    sent = [delivery for delivery in proof.deliveries if delivery.status is not Handover.SKIPPED]
    skipped = proof.with_status(Handover.SKIPPED)
    if proof.deliveries:
        where = f", mailbox {proof.mailbox}" if proof.mailbox else ""
        out.append(f"Test messages (--deliver{where}):")
        out.extend(f"  {delivery.attempt.test.id}: {proof.words(delivery)}" for delivery in sent)
        if skipped:
            ids = ", ".join(delivery.attempt.test.id for delivery in skipped)
            out.append(f"  no test message for {len(skipped)} more accepted attempts "
                       f"({skipped[0].reason}): {ids}")
    if proof.mailbox_error:
        out.append(proof.mailbox_error)
    if proof.evidence_path:
        out.append(f"Evidence written: {printable(proof.evidence_path)}")
    if proof.evidence_error:
        out.append(f"Evidence not written: {printable(proof.evidence_error)}")
    return out


def seconds(value: float) -> str:
    """A delay for people: hundredths below ten seconds (a local relay takes a tenth)."""
    return f"{value:.2f} s" if value < 10 else f"{value:.0f} s"


def messages(count: int) -> str:
    return f"{count} test message{'' if count == 1 else 's'}"
