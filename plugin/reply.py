"""SMTP replies as the server sent them (RFC 5321 section 4.2), parsed without trust."""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_LINE_BYTES = 2048        # RFC 5321 allows 512; be lenient, but bounded
MAX_REPLY_LINES = 100        # a long EHLO reply has ~15; more is a hostile server
MAX_TEXT_CHARS = 200         # per line, when shown to people

_REPLY_LINE = re.compile(rb"^([2-5][0-9][0-9])([ -]|$)")
# What the first bytes of a reply line can be while the rest is still on its way.
_REPLY_START = re.compile(rb"(?:[2-5](?:[0-9](?:[0-9][ \r\n-]?)?)?)?")
_ENHANCED = re.compile(r"^([245])\.([0-9]{1,3})\.([0-9]{1,3})(?=\s|$)")


class ReplyFormatError(ValueError):
    """The server said something that is not an SMTP reply line."""


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 enhanced status code, when it agrees with the reply code."""
        match = _ENHANCED.match(self.lines[0]) if self.lines else None
        if match and match.group(1) == str(self.code)[0]:
            return match.group(0)
        return None

    @property
    def text(self) -> str:
        return " ".join(line for line in self.lines if line)

    def __str__(self) -> str:
        return printable(f"{self.code} {self.text}".strip())

    def wire_lines(self) -> list[str]:
        """The reply as it was sent, one printable string per line."""
        last = len(self.lines) - 1
        return [printable(f"{self.code}{' ' if index == last else '-'}{line}".strip())
                for index, line in enumerate(self.lines)]


def parse_line(raw: bytes) -> tuple[int, bool, str]:
    """One reply line → (code, is_last, text). Raises ReplyFormatError."""
    line = raw.rstrip(b"\r\n")
    match = _REPLY_LINE.match(line)
    if not match:
        raise ReplyFormatError(f"no reply code in {printable(_decode(line))!r}")
    is_last = match.group(2) != b"-"
    return int(match.group(1)), is_last, _decode(line[4:]).strip()


def check_start(partial: bytes) -> None:
    """Raise ReplyFormatError as soon as the first bytes of a line rule out a reply line.

    An SSH banner or binary noise shows at once that a server is not SMTP; waiting
    for the end of its line could last until the deadline.
    """
    if not _REPLY_START.fullmatch(partial[:4]):
        line = partial.split(b"\n", 1)[0].rstrip(b"\r")
        raise ReplyFormatError(f"no reply code in {printable(_decode(line))!r}")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def printable(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """Server text made safe for a status line: no control characters, no '|', bounded.

    Beyond the C0 and C1 controls, Unicode line and paragraph separators break lines
    for some readers and bidirectional overrides reorder what people see, so every
    character Python does not call printable (except the space) becomes '?'.
    """
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return "".join(char if char.isprintable() and char != "|" else "?" for char in text)
