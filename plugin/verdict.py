"""Judging and wording: nagiosplugin Contexts that decide the state, a Summary that words it.

The state of a relay check is not the worst of independent metrics: one accepted
relay is CRITICAL even if the battery then timed out.  So one function decides,
in the order an on-call engineer needs: relayed, could not test, could not decide, OK.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import nagiosplugin

from .classify import Outcome
from .reply import Reply, printable
from .runner import AttemptResult, TargetReport, describe_failure
from .session import TranscriptLine
from .targets import TargetPlan

# Nagios keeps 8 KB of plugin output: full dialogues for the first few accepted
# attempts, one line each for the rest.
FULL_EVIDENCE = 5
# Lines of one reply shown in that evidence: a hostile server can send a hundred.
EVIDENCE_REPLY_LINES = 3
# What the default long output may take of the 8 KB, leaving room for the status
# line and perfdata however long the server's replies were.
LONG_OUTPUT_BYTES = 7000


@dataclass(frozen=True)
class Verdict:
    state: nagiosplugin.state.ServiceState
    summary: str


def judge_report(report: TargetReport, seconds: float) -> Verdict:
    label = report.target.label
    total = len(report.results)
    accepted = report.with_outcome(Outcome.ACCEPTED)
    if accepted:
        if report.proof is not None:   # --deliver: what the test messages showed
            from .proof import judge_proof

            proven = judge_proof(report.proof, label, len(accepted), total, _ids(accepted))
            if proven is not None:
                return Verdict(*proven)
        return Verdict(nagiosplugin.Critical,
                       f"{label} relayed {len(accepted)} of {total} attempts ({_ids(accepted)})")
    untested = report.with_outcome(Outcome.UNTESTED)
    why = describe_failure(report.failure, report.target, seconds)
    prefix = "" if label == report.target.address else f"{label}: "
    if untested and len(untested) == total:
        return Verdict(nagiosplugin.Unknown, f"{prefix}{why}")
    if untested:
        return Verdict(nagiosplugin.Unknown,
                       f"{prefix}{len(untested)} of {total} attempts not made: {why}")
    undecided = (report.with_outcome(Outcome.INCONCLUSIVE)
                 + report.with_outcome(Outcome.TEMPFAIL))
    if undecided:
        reason, _ = Counter(result.reason for result in undecided).most_common(1)[0]
        return Verdict(nagiosplugin.Warn,
                       f"{label} no relay accepted, but {len(undecided)} of {total} attempts "
                       f"undecided ({reason}): {_ids(undecided)}")
    if not any(result.reached_rcpt for result in report.results):
        reasons = {result.reason for result in report.results}
        if reasons == {"MAIL FROM authentication required"}:
            return Verdict(nagiosplugin.Ok,
                           f"{label} refused all {total} relay attempts "
                           "(authentication required to send)")
        example = printable(str(report.results[0].mail)) if report.results else ""
        return Verdict(nagiosplugin.Warn,
                       f"{label} relay policy never reached: every MAIL FROM refused "
                       f"({example})")
    return Verdict(nagiosplugin.Ok, f"{label} refused all {total} relay attempts")


def _ids(results: list[AttemptResult], limit: int = 6) -> str:
    ids = [result.attempt.test.id for result in results]
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


# How bad a state is for on-call: an accepted relay outranks a target we could not test.
SEVERITY = (nagiosplugin.Ok, nagiosplugin.Warn, nagiosplugin.Unknown, nagiosplugin.Critical)


@dataclass(frozen=True)
class TargetVerdict:
    label: str
    verdict: Verdict
    report: TargetReport | None = None


def judge_targets(plan: TargetPlan, reports: list[TargetReport],
                  seconds: float) -> list[TargetVerdict]:
    """A verdict per tested address and per name that could not be tested, worst first."""
    verdicts = [TargetVerdict(report.target.label, judge_report(report, seconds), report)
                for report in reports]
    verdicts += [TargetVerdict(problem.name, Verdict(
        nagiosplugin.Unknown if problem.fatal else nagiosplugin.Warn, problem.reason))
        for problem in plan.problems]
    verdicts += [TargetVerdict(domain, Verdict(
        nagiosplugin.Ok, f"{domain} publishes a null MX: it accepts no mail, nothing to test"))
        for domain in plan.null_mx]
    if plan.skipped:
        verdicts.append(TargetVerdict("--max-targets", Verdict(
            nagiosplugin.Warn, f"{plan.skipped} more addresses not tested (--max-targets)")))
    return sorted(verdicts, key=lambda item: -SEVERITY.index(item.verdict.state))


def overall(verdicts: list[TargetVerdict], prefix: str) -> Verdict:
    """One state and one status line for every target: leaking hosts first."""
    if len(verdicts) == 1:
        return Verdict(verdicts[0].verdict.state, prefix + verdicts[0].verdict.summary)
    state = verdicts[0].verdict.state
    problems = [item.verdict.summary for item in verdicts if item.verdict.state != nagiosplugin.Ok]
    fine = [item for item in verdicts if item.verdict.state == nagiosplugin.Ok]
    if not problems:
        tested = [item.label for item in fine if item.report is not None]
        others = [item.verdict.summary for item in fine if item.report is None]
        parts = ([f"{len(tested)} addresses refused every relay attempt "
                  f"({', '.join(tested)})"] if tested else []) + others
        return Verdict(state, prefix + "; ".join(parts))
    if len(fine) > 3:
        problems.append(f"{len(fine)} others OK")
    elif fine:
        problems.append(", ".join(f"{item.label} OK" for item in fine))
    return Verdict(state, prefix + "; ".join(problems))


class RelayContext(nagiosplugin.Context):
    """Decides the state from the whole report of the probe."""

    def __init__(self, seconds: float, prefix: str = "") -> None:
        super().__init__("relay")
        self.seconds = seconds
        self.prefix = prefix

    def evaluate(self, metric, resource):
        verdicts = judge_targets(resource.plan, resource.reports, self.seconds)
        verdict = overall(verdicts, self.prefix)
        return self.result_cls(verdict.state, verdict.summary, metric)


class CountContext(nagiosplugin.ScalarContext):
    """Per-outcome counts: perfdata only, never a state of their own."""

    def __init__(self) -> None:
        super().__init__("count")

    def evaluate(self, metric, resource):
        return self.result_cls(nagiosplugin.Ok, None, metric)


class RelaySummary(nagiosplugin.Summary):
    def __init__(self, verbose: int, seconds: float) -> None:
        self.verbose_level = verbose
        self.seconds = seconds

    def ok(self, results):
        return results["relay"].hint

    def problem(self, results):
        relay = results["relay"] if "relay" in results else None  # noqa: SIM401 (no .get)
        if relay is not None and relay.state != nagiosplugin.Ok:
            return relay.hint
        worst = results.first_significant
        if worst.metric is not None and worst.metric.name == "time":
            hint = relay.hint if relay is not None else ""
            return f"{hint}; slow: {worst.metric.value:g} s ({worst.hint})"
        return str(worst)

    def verbose(self, results):
        if "relay" not in results:
            return []
        probe = results["relay"].resource
        verdicts = judge_targets(probe.plan, probe.reports, self.seconds)
        if len(verdicts) == 1 and verdicts[0].report is not None:
            return long_output(verdicts[0].report, verdicts[0].verdict.state,
                               self.verbose_level)
        out: list[str] = []
        for item in verdicts:
            state = item.verdict.state
            heading = f"[{str(state).upper()}] {item.verdict.summary}"
            details = [] if item.report is None else long_output(
                item.report, state, self.verbose_level)
            if details or state != nagiosplugin.Ok or item.report is None:
                out.append(heading)
                out.extend(f"  {line}" for line in details)
        return out


def long_output(report: TargetReport, state, level: int) -> list[str]:
    out: list[str] = []
    accepted = report.with_outcome(Outcome.ACCEPTED)
    if accepted:
        banner = f" (banner: {report.banner})" if report.banner else ""
        out.append(f"Accepted relay attempts on {report.target.label} port "
                   f"{report.target.port}{banner}:")
        for result in accepted[:FULL_EVIDENCE]:
            out.extend(_evidence(result))
        out.extend(f"  {result.attempt.test.id}: C: RCPT TO:{printable(result.attempt.rcpt_to)}"
                   f" S: {result.rcpt}" for result in accepted[FULL_EVIDENCE:])
    if report.proof is not None:
        from .proof import proof_lines

        out.extend(proof_lines(report.proof))
    undecided = [result for result in report.results
                 if result.outcome in (Outcome.INCONCLUSIVE, Outcome.TEMPFAIL)]
    if undecided and state != nagiosplugin.Ok:
        out.append("Undecided attempts:")
        groups: dict[tuple[str, str], list[AttemptResult]] = {}
        for result in undecided:
            groups.setdefault((result.reason, _reply(result)), []).append(result)
        out.extend(f"  {reason}: {reply}: {_ids(members, limit=len(members))}"
                   for (reason, reply), members in groups.items())
    if state == nagiosplugin.Unknown and report.transcripts:
        out.append(f"Last dialogue with {report.target.address}:")
        out.extend(_format_lines(report.transcripts[-1].lines[-10:], timed=False))
    out.extend(f"Note: {printable(note)}" for note in report.notes)
    if level >= 1:
        out.append("All attempts:")
        out.extend(f"  {result.attempt.test.id:<21} {result.outcome.value:<12} "
                   f"{_reply(result)}" for result in report.results)
    if level >= 2 and report.envelope is not None:
        env = report.envelope
        out.append(f"Target {report.target.label} port {report.target.port}; "
                   f"host name {env.target_host}; domain {env.target_domain}; "
                   f"sender {env.sender}; recipient {env.recipient}; "
                   f"{len(report.transcripts)} connections")
    if level >= 3:
        for transcript in report.transcripts:
            out.append(f"Connection {transcript.connection} to {transcript.address}:")
            out.extend(_format_lines(transcript.lines, timed=True))
    return out if level else _within(out, LONG_OUTPUT_BYTES)


def _within(lines: list[str], budget: int) -> list[str]:
    """The lines that fit in `budget` bytes, and a last line saying what was cut."""
    used = 0
    for index, line in enumerate(lines):
        used += len(line.encode()) + 1
        if used > budget:
            return [*lines[:index], f"... {len(lines) - index} more lines cut to stay within "
                                    "what Nagios keeps; run with -v to see them"]
    return lines


def _reply(result: AttemptResult) -> str:
    reply = result.decisive_reply
    return str(reply) if reply is not None else printable(result.reason)


def _evidence(result: AttemptResult) -> list[str]:
    """The MAIL/RCPT exchange of one attempt, each command next to its reply."""
    lines = [f"  {result.attempt.test.id} ({result.attempt.test.purpose}):",
             f"    C: MAIL FROM:{printable(result.attempt.mail_from)}"]
    lines.extend(f"    S: {line}" for line in _first_lines(result.mail))
    lines.append(f"    C: RCPT TO:{printable(result.attempt.rcpt_to)}")
    lines.extend(f"    S: {line}" for line in _first_lines(result.rcpt))
    return lines


def _first_lines(reply: Reply) -> list[str]:
    wire = reply.wire_lines()
    if len(wire) <= EVIDENCE_REPLY_LINES:
        return wire
    shown = EVIDENCE_REPLY_LINES - 1
    return [*wire[:shown], f"... ({len(wire) - shown} more lines)"]


def _format_lines(lines: list[TranscriptLine], timed: bool, indent: int = 2) -> list[str]:
    names = {">": "C:", "<": "S:", "*": "--"}
    pad = " " * indent
    return [f"{pad}{f'[{line.offset:7.3f}] ' if timed else ''}{names[line.direction]} "
            f"{printable(line.text)}" for line in lines]
