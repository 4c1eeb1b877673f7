"""Validated settings: what the command line asked for, in the types the probe uses."""

from __future__ import annotations

from dataclasses import dataclass

from .battery import RelayTest


@dataclass(frozen=True)
class Settings:
    hosts: tuple[str, ...]       # -H: host names or addresses
    domains: tuple[str, ...]     # -D: mail domains, every MX host tested
    resolvers: tuple[tuple[str, int], ...]
    max_targets: int
    parallel: int
    port: int
    timeout: float
    family: int | None           # 4, 6 or None
    helo: str
    sender: str
    recipient: str
    target_domain: str | None
    tests: tuple[RelayTest, ...]
    starttls: str                # auto, always, never
    implicit_tls: bool
    tls_verify: bool
    foreign_literal: str
    verbose: int
    warning: str | None
    critical: str | None
