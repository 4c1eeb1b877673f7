"""A small scriptable SMTP server on loopback, for behaviour no real MTA shows on demand.

It records every line a client sends, answers MAIL and RCPT through policy callables,
and can misbehave on purpose (drop the connection, refuse EHLO).  It runs its own
asyncio loop in a thread so that a test can start it, run the plugin as a process
against it, and read what it saw.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

Rcpt = Callable[[str, str], str]

RELAY_DENIED = "554 5.7.1 Relay access denied"
OK_RCPT = "250 2.1.5 Ok"


def closed(sender: str, recipient: str) -> str:
    return RELAY_DENIED


def open_relay(sender: str, recipient: str) -> str:
    return OK_RCPT


def accept_if(pattern: str) -> Rcpt:
    """Relay only recipients (or, with 'sender:' prefix, senders) matching a regex."""
    if pattern.startswith("sender:"):
        regex = re.compile(pattern.removeprefix("sender:"))
        return lambda sender, recipient: OK_RCPT if regex.search(sender) else RELAY_DENIED
    regex = re.compile(pattern)
    return lambda sender, recipient: OK_RCPT if regex.search(recipient) else RELAY_DENIED


@dataclass
class Behaviour:
    banner: str = "220 mx.fake.test ESMTP fake"
    banner_delay: float = 0.0                # seconds of silence before the banner
    ehlo: list[str] | None = field(
        default_factory=lambda: ["mx.fake.test", "PIPELINING", "8BITMIME"])
    mail: Callable[[str], str] = lambda sender: "250 2.1.0 Ok"
    rcpt: Rcpt = closed
    drop_after_rcpts: int | None = None      # hang up after this many RCPTs per connection


class FakeSMTP:
    def __init__(self, behaviour: Behaviour | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.behaviour = behaviour or Behaviour()
        self.host = host
        self.port = port
        self.commands: list[str] = []
        self.sessions: list[list[str]] = []     # the same commands, per connection
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> FakeSMTP:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=5)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    def verbs(self, commands: list[str] | None = None) -> list[str]:
        return [command.split(" ", 1)[0].split(":", 1)[0].upper()
                for command in (self.commands if commands is None else commands)]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        session: list[str] = []
        self.sessions.append(session)
        behaviour = self.behaviour
        sender = ""
        rcpts = 0

        async def say(text: str) -> None:
            writer.write(text.encode() + b"\r\n")
            await writer.drain()

        try:
            await asyncio.sleep(behaviour.banner_delay)
            await say(behaviour.banner)
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.commands.append(line)
                session.append(line)
                upper = line.upper()
                if upper.startswith("EHLO"):
                    if behaviour.ehlo is None:
                        await say("502 5.5.2 Error: command not recognized")
                    else:
                        lines = behaviour.ehlo
                        for extension in lines[:-1]:
                            await say(f"250-{extension}")
                        await say(f"250 {lines[-1]}")
                elif upper.startswith("HELO"):
                    await say("250 mx.fake.test")
                elif upper.startswith("MAIL FROM:"):
                    sender = line[10:].strip()
                    await say(behaviour.mail(sender))
                elif upper.startswith("RCPT TO:"):
                    rcpts += 1
                    if behaviour.drop_after_rcpts and rcpts > behaviour.drop_after_rcpts:
                        break
                    await say(behaviour.rcpt(sender, line[8:].strip()))
                elif upper == "RSET":
                    sender = ""
                    await say("250 2.0.0 Ok")
                elif upper == "DATA":
                    await say("354 End data with <CR><LF>.<CR><LF>")
                    while (await reader.readline()).rstrip(b"\r\n") != b".":
                        pass
                    await say("250 2.0.0 Ok: queued")
                elif upper == "QUIT":
                    await say("221 2.0.0 Bye")
                    break
                else:
                    await say("502 5.5.2 Error: command not recognized")
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
