"""The nagiosplugin Resource: runs the relay battery against every target and measures.

It only measures.  What the measurements mean is for verdict.py.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import nagiosplugin

from .classify import Outcome
from .runner import BatteryRun, TargetReport
from .session import Deadline
from .settings import Settings
from .targets import Target, TargetError, TargetPlan, plan_targets


class RelayProbe(nagiosplugin.Resource):
    """Tries the relay battery on every address of the hosts and domains asked for."""

    def __init__(self, settings: Settings, deadline: Deadline) -> None:
        self.settings = settings
        self.deadline = deadline
        self.plan = TargetPlan()
        self.reports: list[TargetReport] = []

    def probe(self):
        settings = self.settings
        try:
            self.plan = plan_targets(list(settings.hosts), list(settings.domains),
                                     settings.port, settings.family, list(settings.resolvers),
                                     settings.max_targets, self.deadline.remaining)
        except TargetError as exc:
            raise nagiosplugin.CheckError(str(exc)) from exc
        targets = self.plan.targets
        if not targets and not self.plan.null_mx:
            raise nagiosplugin.CheckError("; ".join(p.reason for p in self.plan.problems))
        self.reports = self._run(targets)
        if settings.deliver or settings.evidence_dir is not None:
            # Only then: proving loads email, imaplib and ssl.
            from .proof import prove

            yield from prove(settings, self.plan, self.reports, self.deadline)
        tests = len(settings.tests)
        total = tests * len(self.reports)
        yield nagiosplugin.Metric("relay", self._count(Outcome.ACCEPTED), context="relay")
        yield nagiosplugin.Metric("time", round(self.deadline.elapsed(), 3), uom="s", min=0,
                                  context="time")
        for outcome in Outcome:
            yield nagiosplugin.Metric(outcome.value, self._count(outcome), min=0, max=total,
                                      context="count")
        if len(self.reports) > 1 or settings.domains:
            for report, label in zip(self.reports, perf_labels(targets), strict=True):
                yield nagiosplugin.Metric(f"{label}_accepted",
                                          len(report.with_outcome(Outcome.ACCEPTED)),
                                          min=0, max=tests, context="count")
                yield nagiosplugin.Metric(f"{label}_time", round(report.elapsed, 3), uom="s",
                                          min=0, context="count")

    def _run(self, targets: list[Target]) -> list[TargetReport]:
        def run_one(target: Target) -> TargetReport:
            return BatteryRun(self.settings, target, self.deadline).run()

        if len(targets) <= 1:
            return [run_one(target) for target in targets]
        # Threads, not processes: the work is waiting on sockets, and every run
        # obeys the same absolute deadline.
        with ThreadPoolExecutor(max_workers=min(self.settings.parallel, len(targets))) as pool:
            return list(pool.map(run_one, targets))

    def _count(self, outcome: Outcome) -> int:
        return sum(len(report.with_outcome(outcome)) for report in self.reports)


def perf_labels(targets: list[Target]) -> list[str]:
    """Perfdata label stems: the host name, plus the address where a name has several."""
    names = [target.name for target in targets]
    return [target.name if names.count(target.name) == 1
            else f"{target.name}_{target.address.replace(':', '_')}"
            for target in targets]
