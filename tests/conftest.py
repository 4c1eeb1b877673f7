"""Shared test helpers: run the plugin as a user would, and read its output."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = "relaytest@relay.example.net"


def plugin_command() -> list[str]:
    """The installed console script next to this interpreter, else the checkout's script."""
    installed = Path(sys.executable).parent / "check_open_relay"
    if installed.exists():
        return [str(installed)]
    found = shutil.which("check_open_relay")
    return [found] if found else [sys.executable, str(ROOT / "check_open_relay.py")]


@dataclass
class PluginRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def status_line(self) -> str:
        return self.stdout.splitlines()[0] if self.stdout else ""

    @property
    def long_output(self) -> str:
        lines = self.stdout.splitlines()[1:]
        return "\n".join(line for line in lines if not line.startswith("|"))

    @property
    def perfdata(self) -> dict[str, str]:
        text = self.stdout.split("|", 1)[1] if "|" in self.stdout else ""
        return dict(re.findall(r"'?([^'=\s]+)'?=(\S+)", text))

    def perf_value(self, label: str) -> float:
        return float(re.match(r"[-0-9.]+", self.perfdata[label]).group(0))


def run_plugin(*args: str, timeout: float = 60) -> PluginRun:
    command = plugin_command()
    env = dict(os.environ)
    if command[0] == sys.executable:
        env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([*command, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    return PluginRun(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def plugin():
    return run_plugin
