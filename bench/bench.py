"""Measure check_open_relay in one run, against references measured in the same run.

Every comparison alternates the commands round by round, so that whatever else the
machine does falls on both alike, and reports the median with the spread (min-max).
Results go to a Markdown table with the machine and the date.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

CHECK = str(Path(sys.executable).parent / "check_open_relay")
CHECK_SMTP = "/usr/lib/nagios/plugins/check_smtp"
GNU_TIME = "/usr/bin/time"
OUTSIDE = "relaytest@relay.example.net"


@dataclass
class Run:
    seconds: float
    cpu: float          # user + system seconds of the child
    max_rss_kb: int
    returncode: int
    stdout: str


def run(command: list[str], timeout: float = 120) -> Run:
    """One child, with its own resource usage (wait4, not the cumulative RUSAGE_CHILDREN).

    Peak memory comes from GNU time, a small parent: a child forked from this large
    process would count this process's pages in its own ru_maxrss until exec.
    """
    started = time.perf_counter()
    child = subprocess.Popen([GNU_TIME, "-f", "%M", *command], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    killer = threading.Timer(timeout, child.kill)
    killer.start()
    try:
        assert child.stdout is not None and child.stderr is not None
        out = child.stdout.read()
        err = child.stderr.read()
        _, status, usage = os.wait4(child.pid, 0)
    finally:
        killer.cancel()
        child.stdout.close()
        child.stderr.close()
    child.returncode = os.waitstatus_to_exitcode(status)
    max_rss = int(err.split()[-1]) if err.split() and err.split()[-1].isdigit() else 0
    return Run(time.perf_counter() - started, usage.ru_utime + usage.ru_stime,
               max_rss, child.returncode, out.decode(errors="replace"))


@dataclass
class Series:
    name: str
    runs: list[Run]

    @property
    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    def spread(self) -> str:
        times = [r.seconds for r in self.runs]
        return f"{min(times):.3f}-{max(times):.3f}"


def alternate(commands: dict[str, list[str]], rounds: int,
              check: Callable[[str, Run], None] | None = None) -> dict[str, Series]:
    series = {name: Series(name, []) for name in commands}
    for _ in range(rounds):
        for name, command in commands.items():
            result = run(command)
            if check:
                check(name, result)
            series[name].runs.append(result)
    return series


def expect(state: int) -> Callable[[str, Run], None]:
    def verify(name: str, result: Run) -> None:
        if name.startswith("check_open_relay") and result.returncode != state:
            raise SystemExit(f"{name} exited {result.returncode}, expected {state}:\n"
                             f"{result.stdout}")
    return verify


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, what: str, ours: str, reference: str, ratio: str) -> None:
        self.rows.append((what, ours, reference, ratio))
        print(f"{what}: {ours} vs {reference} -> {ratio}", flush=True)

    def markdown(self) -> str:
        lines = ["| measurement | check_open_relay | reference | result |",
                 "| --- | --- | --- | --- |"]
        lines += [f"| {' | '.join(row)} |" for row in self.rows]
        return "\n".join(lines)


def startup(table: Table, rounds: int) -> None:
    commands = {"check_open_relay --version": [CHECK, "--version"],
                "python3 -c pass": [sys.executable, "-c", "pass"]}
    if Path(CHECK_SMTP).exists():
        commands["check_smtp --version"] = [CHECK_SMTP, "--version"]
    series = alternate(commands, rounds * 3)
    ours = series["check_open_relay --version"]
    bare = series["python3 -c pass"]
    table.add("start-up: `--version` over `python3 -c pass`",
              f"{ours.median * 1000:.1f} ms ({ours.spread()} s)",
              f"{bare.median * 1000:.1f} ms ({bare.spread()} s)",
              f"+{(ours.median - bare.median) * 1000:.1f} ms (target ≤ 50 ms)")
    if "check_smtp --version" in series:
        floor = series["check_smtp --version"]
        table.add("start-up vs the C check_smtp (floor of a plugin process)",
                  f"{ours.median * 1000:.1f} ms", f"{floor.median * 1000:.1f} ms",
                  f"{ours.median / floor.median:.1f}x")


@contextlib.contextmanager
def delayed_domain(hosts: int, delay: float) -> Iterator[str]:
    from fakedns import FakeDNS
    from fakesmtp import Behaviour, FakeSMTP

    names = [f"mx{index}.slow.test" for index in range(1, hosts + 1)]
    zone: dict = {"slow.test": {"MX": [f"{10 * i} {name}." for i, name in enumerate(names)]}}
    zone.update({name: {"A": [f"127.0.5.{10 + i}"]} for i, name in enumerate(names)})
    with contextlib.ExitStack() as stack:
        dns = stack.enter_context(FakeDNS(zone))
        for i, name in enumerate(names):
            stack.enter_context(FakeSMTP(Behaviour(banner=f"220 {name} ESMTP",
                                                   banner_delay=delay),
                                         f"127.0.5.{10 + i}", 25))
        yield dns.address


def domain(table: Table, rounds: int) -> None:
    with delayed_domain(4, 1.0) as resolver:
        command = [CHECK, "-D", "slow.test", "--resolver", resolver, "--to", OUTSIDE]
        series = alternate({"check_open_relay": command}, rounds, expect(0))
    ours = series["check_open_relay"]
    table.add("domain with 4 MX hosts, each banner delayed 1 s, full battery",
              f"{ours.median:.3f} s ({ours.spread()})", "sequential: > 4 s",
              f"target ≤ 1.5 s: {'met' if ours.median <= 1.5 else 'NOT met'}")


def stock_closed_postfix():
    from mta import postfix, untrusted_network

    return postfix("127.0.5.21", "mx.closed.example",
                   mynetworks=untrusted_network("127.0.5.21"))


def open_postfix():
    from mta import client_address, postfix

    return postfix("127.0.5.22", "mx.open.example",
                   mynetworks=f"{client_address('127.0.5.22')}/32")


def against_postfix(table: Table, rounds: int) -> None:
    from mta import POSTFIX, MailSink, NxDomainResolver

    if not POSTFIX.exists():
        print("postfix is not installed (apt-get install postfix): Postfix rows skipped")
        return

    if not shutil.which("nmap"):
        print("nmap is not installed (apt-get install nmap): nmap rows skipped")
    with MailSink(), NxDomainResolver():
        for label, starter, state in (("stock closed Postfix", stock_closed_postfix, 0),
                                      ("open Postfix", open_postfix, 2)):
            with starter() as server:
                ours_cmd = [CHECK, "-H", server.address, "--to", OUTSIDE, "-t", "60"]
                commands = {"check_open_relay": ours_cmd}
                if shutil.which("nmap"):
                    commands["nmap"] = [
                        "nmap", "-Pn", "-n", "-p25", "--script", "smtp-open-relay",
                        "--script-args", f"smtp-open-relay.to={OUTSIDE},"
                        f"smtp-open-relay.domain=relay.example.net", server.address]
                series = alternate(commands, rounds, expect(state))
                ours = series["check_open_relay"]
                one = ours.runs[len(ours.runs) // 2]
                if "nmap" in series:
                    nmap = series["nmap"]
                    table.add(f"full battery vs {label}, wall time",
                              f"{ours.median:.3f} s ({ours.spread()})",
                              f"nmap {nmap.median:.3f} s ({nmap.spread()})",
                              f"{ours.median / nmap.median:.3f}x nmap")
                table.add(f"one full check vs {label}: CPU, peak RSS",
                          f"{statistics.median(r.cpu for r in ours.runs):.3f} CPU s, "
                          f"{max(r.max_rss_kb for r in ours.runs) / 1024:.1f} MB",
                          "target ≤ 40 MB", one.stdout.splitlines()[0][:60])


NOTES = """\
Notes:
- nmap's time against the stock closed Postfix is its error throttle: one connection,
  and after 10 refusals Postfix sleeps a second before every reply. check_open_relay
  spreads the battery over connections of at most 7 tests, up to 4 at once.
- The spread against the open Postfix is Postfix's own flow control: every accepted
  MAIL FROM starts a message, and when messages arrive faster than they leave
  (in_flow_delay, 1 s by default) smtpd pauses before answering. It hits nmap too.
- Peak memory is measured by GNU time around the plugin process alone.
"""


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/run needs root: its servers listen on port 25 of 127.0.x.y")
    table = Table()
    startup(table, args.rounds)
    domain(table, args.rounds)
    against_postfix(table, args.rounds)
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"# Benchmarks\n\nMeasured by `bash bench/run --rounds {args.rounds}` on "
            f"{today}.\nMachine: {machine()}.\n\nMedians over the rounds, spread "
            "(min-max) in brackets; commands alternate round by round.\n\n"
            f"{table.markdown()}\n\n{NOTES}")
    Path(args.output).write_text(text)
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
