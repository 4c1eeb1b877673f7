"""Start an open relay and a closed server on loopback and check both, as on-call would see it."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fakesmtp import Behaviour, FakeSMTP, accept_if, open_relay

CHECK = str(Path(sys.executable).parent / "check_open_relay")

SERVERS = [
    ("a closed server (every relay attempt refused)", Behaviour()),
    ("a backup MX that forwards percent-hacked addresses", Behaviour(
        banner="220 mx2.demo.test ESMTP", rcpt=accept_if(r"%"))),
    ("a plain open relay", Behaviour(banner="220 relay.demo.test ESMTP", rcpt=open_relay)),
]


def main() -> None:
    for title, behaviour in SERVERS:
        with FakeSMTP(behaviour) as server:
            command = [CHECK, "-H", "127.0.0.1", "-p", str(server.port),
                       "--to", "relaytest@monitor.example.net", "-t", "10"]
            print(f"=== {title}\n$ {shlex.join(command)}")
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
            lines = done.stdout.splitlines()
            shown = [*lines[:14], "  ..." , lines[-1]] if len(lines) > 16 else lines
            print("\n".join(shown))
            print(f"(exit code {done.returncode})\n")


if __name__ == "__main__":
    main()
