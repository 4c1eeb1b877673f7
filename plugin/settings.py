"""Validated settings: what the command line asked for, in the types the probe uses."""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from nagiosplugin import Range

from .battery import RelayTest, address_literal, select
from .errors import UsageError
from .mailbox import MailboxURL, Secret, parse_mailbox_url
from .targets import delivered_locally, derive_domain, ip_version, local_recipient_message

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+\.?$")
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$&'*+/=?^_`{}~-]+(?:\.[A-Za-z0-9!#$&'*+/=?^_`{}~-]+)*$")
_FORBIDDEN = re.compile(r"[\r\n\x00]")




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
    # Proving a relay (opt-in): see plugin/proof.py.
    deliver: bool = False
    max_messages: int = 5
    verify_imap: MailboxURL | None = None
    imap_password: Secret | None = None
    verify_wait: float = 20.0
    unconfirmed_state: str = "warning"
    evidence_dir: str | None = None


def validate(args: argparse.Namespace) -> Settings:
    """Every option checked before any connection; UsageError names the first bad one."""
    if not args.hostname and not args.domain:
        raise UsageError("give a mail server (-H HOST) or a mail domain (-D DOMAIN)")
    arguments = [("--hostname", host) for host in args.hostname]
    arguments += [("--domain", domain) for domain in args.domain]
    arguments += [("--resolver", resolver) for resolver in args.resolver]
    for option, value in (*arguments, ("--to", args.to),
                          ("--from", args.sender), ("--helo", args.helo),
                          ("--target-domain", args.target_domain), ("--tests", args.tests),
                          ("--foreign-literal", args.foreign_literal),
                          ("--warning", args.warning), ("--critical", args.critical)):
        if value is not None and _FORBIDDEN.search(value):
            raise UsageError(f"{option} contains a CR, LF or NUL character")
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is not a port number (1-65535)")
    if not (0 < args.timeout <= 3600) or math.isnan(args.timeout):
        raise UsageError(f"--timeout {args.timeout:g} must be more than 0 and at most 3600")
    for option, low, high in (("--max-targets", 1, 256), ("--parallel", 1, 64)):
        value = getattr(args, option[2:].replace("-", "_"))
        if not low <= value <= high:
            raise UsageError(f"{option} {value} must be from {low} to {high}")
    for host in args.hostname:
        if ip_version(host) is None and not _HOSTNAME.match(host):
            raise UsageError(f"--hostname {host!r} is neither a host name nor an address")
    for domain in args.domain:
        if not _DOMAIN.match(domain):
            raise UsageError(f"--domain {domain!r} is not a domain name")
    resolvers = tuple(_resolver(text) for text in args.resolver)
    recipient = _mailbox("--to", args.to)
    for host in args.hostname:
        _refuse_local_recipient(recipient, host, args.target_domain)
    for domain in args.domain:
        _refuse_local_recipient(recipient, domain, args.target_domain or domain)
    sender = _mailbox("--from", args.sender) if args.sender else recipient
    helo = args.helo or _default_helo()
    if not (_HOSTNAME.match(helo) or _is_literal(helo)):
        raise UsageError(f"--helo {helo!r} is neither a host name nor an address literal")
    if args.target_domain is not None and not _DOMAIN.match(args.target_domain):
        raise UsageError(f"--target-domain {args.target_domain!r} is not a domain name")
    if ip_version(args.foreign_literal) is None:
        raise UsageError(f"--foreign-literal {args.foreign_literal!r} is not an IP address")
    for option, spec in (("--warning", args.warning), ("--critical", args.critical)):
        if spec is not None:
            try:
                Range(spec)
            except ValueError as exc:
                raise UsageError(f"{option} {spec!r} is not a threshold range: {exc}") from exc
    ids = [item.strip() for item in args.tests.split(",") if item.strip()]
    if not ids:
        raise UsageError("--tests names no test (give test ids or 'all')")
    try:
        tests = select(ids)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return Settings(
        hosts=tuple(args.hostname),
        domains=tuple(domain.rstrip(".").lower() for domain in args.domain),
        resolvers=resolvers, max_targets=args.max_targets, parallel=args.parallel,
        port=args.port, timeout=args.timeout, family=args.family,
        helo=helo, sender=sender, recipient=recipient,
        target_domain=args.target_domain.rstrip(".").lower() if args.target_domain else None,
        tests=tests, starttls=args.starttls, implicit_tls=args.ssl,
        tls_verify=args.tls_verify, foreign_literal=address_literal(args.foreign_literal),
        verbose=min(args.verbose, 3), warning=args.warning, critical=args.critical,
        **_proof_settings(args))


def _proof_settings(args: argparse.Namespace) -> dict:
    """--deliver and its companions.  The password is read here, so that a missing
    file is a usage error before any connection, and is kept in a Secret from then on."""
    if args.verify_imap is not None and not args.deliver:
        raise UsageError("--verify-imap needs --deliver: it looks for the test messages "
                         "that --deliver sends")
    if not 1 <= args.max_messages <= 100:
        raise UsageError(f"--max-messages {args.max_messages} must be from 1 to 100")
    if not (0 < args.verify_wait <= 3600) or math.isnan(args.verify_wait):
        raise UsageError(f"--verify-wait {args.verify_wait:g} must be more than 0 and at "
                         "most 3600")
    for option, value in (("--verify-imap", args.verify_imap),
                          ("--imap-password-file", args.imap_password_file),
                          ("--imap-password-env", args.imap_password_env),
                          ("--evidence-dir", args.evidence_dir)):
        if value is not None and (not value or _FORBIDDEN.search(value)):
            raise UsageError(f"{option} is empty or contains a CR, LF or NUL character")
    url = password = None
    if args.verify_imap is not None:
        try:
            url = parse_mailbox_url(args.verify_imap)
        except ValueError as exc:
            raise UsageError(f"--verify-imap URL {exc}") from exc
        password = _imap_password(args.imap_password_file, args.imap_password_env)
    return {"deliver": args.deliver, "max_messages": args.max_messages, "verify_imap": url,
            "imap_password": password, "verify_wait": args.verify_wait,
            "unconfirmed_state": args.unconfirmed_state, "evidence_dir": args.evidence_dir}


def _imap_password(path: str | None, variable: str | None) -> Secret:
    """From a file or the environment, never the command line; never echoed in errors."""
    if (path is None) == (variable is None):
        raise UsageError("--verify-imap needs the password from exactly one of "
                         "--imap-password-file FILE and --imap-password-env NAME")
    if path is not None:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise UsageError(f"--imap-password-file {path}: {why}") from exc
        if len(lines) != 1:
            raise UsageError(f"--imap-password-file {path} must hold the password on "
                             "one line")
        value, source = lines[0], f"--imap-password-file {path}"
    else:
        value, source = os.environ.get(variable, ""), f"--imap-password-env {variable}"
    # IMAP LOGIN sends the password as a quoted ASCII string.
    if not value or not all(" " <= char <= "~" for char in value):
        raise UsageError(f"{source}: the password is empty or not printable ASCII")
    return Secret(value)


def _refuse_local_recipient(recipient: str, host: str, target_domain: str | None) -> None:
    if ip_version(host) is None:
        name = host.rstrip(".").lower()
        domain = (target_domain or derive_domain(name)).rstrip(".").lower()
        local = delivered_locally(recipient, name, domain)
    else:
        local = delivered_locally(recipient, "", "", address_literal(host))
    if local:
        raise UsageError(local_recipient_message(recipient))


def _resolver(text: str) -> tuple[str, int]:
    """ADDRESS, ADDRESS:PORT or [IPv6]:PORT → (address, port)."""
    address, port = text, "53"
    if text.startswith("[") and "]" in text:
        address, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or "53"
    elif text.count(":") == 1:
        address, port = text.split(":")
    if ip_version(address) is None or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"--resolver {text!r} is not ADDRESS[:PORT] with an IP address")
    return address, int(port)


def _mailbox(option: str, value: str) -> str:
    local, at, domain = value.rpartition("@")
    # RFC 5321 4.5.3.1: a longer address is refused as syntax, which would read as OK.
    if len(local) > 64 or len(domain) > 255 or len(value) > 254:
        raise UsageError(f"{option} is longer than RFC 5321 allows (64 octets before "
                         "the @, 254 in all)")
    if not at or not _LOCAL_PART.match(local) or not (
            _DOMAIN.match(domain) or _is_literal(domain)):
        raise UsageError(f"{option} {value!r} is not a plain mail address (user@domain)")
    return f"{local}@{domain.rstrip('.')}"


def _is_literal(text: str) -> bool:
    if not (text.startswith("[") and text.endswith("]")):
        return False
    inner = text[1:-1]
    if inner.lower().startswith("ipv6:"):
        return ip_version(inner[5:]) == 6
    return ip_version(inner) == 4


def _default_helo() -> str:
    name = socket.gethostname()
    return name if _HOSTNAME.match(name) else "localhost"
