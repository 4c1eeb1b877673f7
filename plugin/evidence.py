"""--evidence-dir: one plain-text file per server that accepted a relay attempt.

The file is what an admin attaches to a ticket: the command, the server and its
addresses, every accepted attempt with its dialogue, what became of its test message
(and the headers it arrived with), then the complete transcripts.  Times are UTC.
It is written to a temporary file in the same folder and then linked to its final
name, so that a reader never sees half a file and an existing file is never replaced.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import socket
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .classify import Outcome
from .runner import TargetReport
from .settings import Settings
from .targets import TargetPlan

if TYPE_CHECKING:
    from .proof import TargetProof

# Same second, same server (two checks at once): -2, -3, ... up to this many.
NAME_TRIES = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")


class EvidenceError(Exception):
    """The evidence file could not be written; the text says where and why."""


def write_evidence(folder: str, settings: Settings, plan: TargetPlan, report: TargetReport,
                   proof: TargetProof, started: float) -> Path:
    """Write the file for `report` (started: time.time() when the check began)."""
    now = datetime.now(UTC)
    text = evidence_text(settings, plan, report, proof, started, now)
    target = report.target
    server = target.address if target.name == target.address else \
        f"{target.name}_{target.address}"
    stem = f"{now:%Y%m%dT%H%M%SZ}-{_UNSAFE.sub('_', server)}"
    return write_atomically(Path(folder), stem, text)


def write_atomically(folder: Path, stem: str, text: str) -> Path:
    """`text` as folder/stem.txt (or stem-2.txt, ...): complete or not at all, never
    replacing a file.  os.link() fails where a name exists, which os.rename() would not."""
    try:
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".check_open_relay-",
                                             suffix=".tmp")
    except OSError as exc:
        raise EvidenceError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o640)   # transcripts name internal hosts: not for everyone
        for number in range(1, NAME_TRIES + 1):
            path = folder / (f"{stem}.txt" if number == 1 else f"{stem}-{number}.txt")
            try:
                os.link(temporary, path)
            except FileExistsError:
                continue
            return path
        raise EvidenceError(f"cannot write to {folder}: {NAME_TRIES} files named {stem}* "
                            "exist already")
    except OSError as exc:
        raise EvidenceError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def evidence_text(settings: Settings, plan: TargetPlan, report: TargetReport,
                  proof: TargetProof, started: float, now: datetime) -> str:
    target = report.target
    accepted = report.with_outcome(Outcome.ACCEPTED)
    addresses = [other.address for other in plan.targets if other.name == target.name]
    resolved = (f"{target.name} -> {', '.join(addresses)}" if target.name != target.address
                else "(the server was given as an address)")
    title = f"Open relay evidence: {target.label} port {target.port}"
    lines = [
        title,
        "=" * len(title),
        "",
        f"Finding:     {proof.finding(len(accepted), len(report.results))}",
        f"Server:      {target.label} port {target.port}",
        f"Resolved:    {resolved}",
        f"Banner:      {_clean(str(report.banner)) if report.banner else '(none)'}",
        f"Check began: {_utc(started)}",
        f"Written:     {now:%Y-%m-%dT%H:%M:%SZ}",
        f"Checked by:  check_open_relay {__version__} on {socket.gethostname()}, "
        f"HELO {settings.helo}",
        f"Command:     {_command()}",
        "             (the IMAP password is read from a file or the environment and "
        "never written here)",
    ]
    if report.envelope is not None:
        envelope = report.envelope
        lines.append(f"Envelope:    sender {envelope.sender}, recipient {envelope.recipient}, "
                     f"target host {envelope.target_host}, target domain "
                     f"{envelope.target_domain}")
    if proof.mailbox:
        lines.append(f"Mailbox:     {proof.mailbox}")
    lines.extend(f"Note:        {_clean(note)}" for note in report.notes)
    if proof.mailbox_error:
        lines.append(f"Problem:     {_clean(proof.mailbox_error)}")
    lines.append("All times are UTC.")
    for index, result in enumerate(accepted, 1):
        heading = (f"Accepted attempt {index} of {len(accepted)}: {result.attempt.test.id} "
                   f"({result.attempt.test.purpose})")
        lines += ["", heading, "-" * len(heading),
                  f"Battery, connection {result.connection}:",
                  f"  C: MAIL FROM:{_clean(result.attempt.mail_from)}"]
        lines += [f"  S: {line}" for line in result.mail.wire_lines()]
        lines.append(f"  C: RCPT TO:{_clean(result.attempt.rcpt_to)}")
        lines += [f"  S: {line}" for line in result.rcpt.wire_lines()]
        delivery = proof.delivery_for(result)
        if delivery is None:
            continue
        lines.append(f"Test message {delivery.token}: {proof.words(delivery)}")
        if delivery.taken_utc:
            lines.append(f"  taken by the server at {_utc(delivery.taken_utc)} on connection "
                         f"{delivery.connection}: {delivery.reply}")
        arrival = proof.arrivals.get(delivery.token)
        if arrival is not None:
            lines.append("  Headers of the message as it arrived in the mailbox:")
            lines += [f"    {_clean(line)}" for line in arrival.headers.splitlines()]
    lines += ["", "Transcripts", "-----------",
              "C: what the check sent, S: what the server answered, --: notes."]
    names = {">": "C:", "<": "S:", "*": "--"}
    for transcript in report.transcripts:
        lines.append(f"Connection {transcript.connection} to {transcript.address}:")
        lines += [f"  {_utc(started + line.offset)} {names[line.direction]} {_clean(line.text)}"
                  for line in transcript.lines]
    return "\n".join(lines) + "\n"


def _command() -> str:
    """The command as run.  It holds no credential: validate() refuses a password in
    the --verify-imap URL, and the password options take a file or a variable name."""
    return shlex.join(["check_open_relay", *sys.argv[1:]])


def _utc(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def _clean(text: str) -> str:
    """Server text, which is untrusted: no control characters in an admin's terminal
    (tabs, which fold header lines, become spaces)."""
    return "".join(char if char.isprintable() else "?" for char in text.expandtabs(8))
