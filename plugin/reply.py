"""SMTP replies as the server sent them (RFC 5321 section 4.2), parsed without trust."""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_LINE_BYTES = 2048        # RFC 5321 allows 512; be lenient, but bounded
MAX_REPLY_LINES = 100        # a long EHLO reply has ~15; more is a hostile server
MAX_TEXT_CHARS = 200         # per line, when shown to people

_REPLY_LINE = re.compile(rb"^([2-5][0-9][0-9])([ -]|$)")
_ENHANCED = re.compile(r"^([245])\.([0-9]{1,3})\.([0-9]{1,3})(?=\s|$)")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f|]")


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
        raise ReplyFormatError(f"not an SMTP reply line: {printable(_decode(line))!r}")
    is_last = match.group(2) != b"-"
    return int(match.group(1)), is_last, _decode(line[4:]).strip()


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def printable(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """Server text made safe for a status line: no control characters, no '|', bounded."""
    cleaned = _UNPRINTABLE.sub("?", text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."
