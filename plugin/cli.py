"""Command line → validated Settings → the nagiosplugin Check."""

from __future__ import annotations

import argparse
import math
import re
import socket
import sys
import time

import nagiosplugin

from . import __version__
from .battery import BATTERY, address_literal, select
from .settings import Settings
from .targets import delivered_locally, derive_domain, ip_version, local_recipient_message

PLUGIN_NAME = "OPEN_RELAY"
DEFAULT_TIMEOUT = 30.0   # seconds; leaves headroom under Icinga's 60 s check timeout
DEFAULT_FOREIGN_LITERAL = "192.0.2.1"   # TEST-NET-1: never a real destination
# Kept back from -t so that QUIT and printing still fit in the deadline.
RESERVE = 0.3

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+\.?$")
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$&'*+/=?^_`{}~-]+(?:\.[A-Za-z0-9!#$&'*+/=?^_`{}~-]+)*$")
_FORBIDDEN = re.compile(r"[\r\n\x00]")

DESCRIPTION = """\
Tests whether a mail server relays mail from an outside sender to an outside
recipient.  It runs a battery of relay tricks (null sender, spoofed local senders,
percent hack, source routes, bang paths, quoted and double-@ forms, address
literals) and stops each at RCPT TO: no message is ever sent (no DATA).

Alerts CRITICAL when any attempt was accepted, WARNING when some attempts could
not be decided (greylisting, unknown domain, temporary failures), UNKNOWN when
the server could not be tested, OK only when every attempt was refused."""

EPILOG = """\
performance data:
  time          seconds the whole check took (-w/-c apply)
  accepted      attempts the server accepted (a relay)
  refused       attempts refused by policy or for their address form
  inconclusive  refusals that prove nothing (unknown domain, TLS required, ...)
  tempfail      temporary failures (4xx, greylisting)
  untested      attempts not made (deadline, lost connection)

verbosity:
  (none)  status line; on a problem, the dialogue that proves it
  -v      one line per test with its outcome and the server's reply
  -vv     the envelope and connection details as well
  -vvv    the complete transcript of every connection

example:
  check_open_relay -H mx.example.org --to relaytest@monitor.example.net
  check_open_relay -D example.org --to relaytest@monitor.example.net

Exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (also for --help, --version
and bad arguments, as the Monitoring Plugins guidelines ask)."""


class UsageError(Exception):
    """The command line asks for something impossible; exit 3 with one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message)

    def exit(self, status: int = 0, message: str | None = None):
        if message:
            sys.stdout.write(message)
        sys.exit(3)

    def print_help(self, file=None) -> None:
        super().print_help(sys.stdout)


class _ListTests(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> None:
        width = max(len(test.id) for test in BATTERY)
        for test in BATTERY:
            print(f"{test.id:<{width}}  MAIL FROM:{test.mail_from}  RCPT TO:{test.rcpt_to}"
                  f"  # {test.purpose}")
        sys.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="check_open_relay", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("-V", "--version", action="version", version=f"check_open_relay {__version__}")
    add("-v", "--verbose", action="count", default=0,
        help="more output; repeat up to three times (see below)")
    add("-H", "--hostname", action="append", default=[], metavar="HOST",
        help="mail server to test: host name, IPv4 or IPv6 address; every address of "
             "a name is tested (repeatable)")
    add("-D", "--domain", action="append", default=[], metavar="DOMAIN",
        help="mail domain to test: every MX host, every address (RFC 5321 section 5.1; "
             "no MX means the domain itself, a null MX means nothing to test); "
             "repeatable, may be combined with -H")
    add("--resolver", action="append", default=[], metavar="ADDRESS[:PORT]",
        help="DNS server to ask instead of the system's, e.g. 192.0.2.53 or "
             "[2001:db8::53]:5353 (repeatable); -H names then resolve there too")
    add("--max-targets", type=int, default=16, metavar="N",
        help="test at most N addresses; the rest are reported as not tested "
             "(default: %(default)s)")
    add("--parallel", type=int, default=8, metavar="N",
        help="test up to N addresses at the same time (default: %(default)s)")
    add("-p", "--port", type=int, default=25, help="SMTP port (default: %(default)s)")
    add("-t", "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help="deadline for the whole check; a partial result is reported when it "
             "expires (default: %(default)g)")
    family = parser.add_mutually_exclusive_group()
    family.add_argument("-4", "--use-ipv4", dest="family", action="store_const", const=4,
                        help="connect over IPv4 only")
    family.add_argument("-6", "--use-ipv6", dest="family", action="store_const", const=6,
                        help="connect over IPv6 only")
    add("-w", "--warning", metavar="RANGE",
        help="warning threshold for the total time in seconds, e.g. 10")
    add("-c", "--critical", metavar="RANGE",
        help="critical threshold for the total time in seconds, e.g. 20")
    add("--to", required=True, metavar="ADDRESS",
        help="outside recipient that must NOT be reachable through the server; use a "
             "mailbox at a real domain you control (e.g. relaytest@monitor.example.net)")
    add("--from", dest="sender", metavar="ADDRESS",
        help="outside sender (default: the --to address)")
    add("--helo", metavar="NAME",
        help="name to send in EHLO/HELO; use a name that resolves, as strict servers "
             "refuse others (default: this machine's host name)")
    add("--target-domain", metavar="DOMAIN",
        help="a domain the server receives mail for, used by the spoofed-sender tests "
             "(default: the host name without its first label, or the name the "
             "server announces when -H is an address)")
    add("--tests", metavar="LIST", default="all",
        help="comma-separated test ids to run, or 'all' (default: %(default)s)")
    add("--list-tests", action=_ListTests, nargs=0,
        help="print the battery, one test per line, and exit")
    add("--starttls", choices=("auto", "always", "never"), default="auto",
        help="auto: upgrade when the server offers it, else test in plain text; "
             "always: UNKNOWN without TLS; never: plain text only (default: %(default)s)")
    add("--ssl", action="store_true",
        help="implicit TLS from the first byte (SMTPS, e.g. port 465)")
    add("--tls-verify", action="store_true",
        help="verify the server's certificate and name (default: any certificate)")
    add("--foreign-literal", metavar="IP", default=DEFAULT_FOREIGN_LITERAL,
        help="address for the recipient-at-address-literal test (default: %(default)s)")
    return parser


def parse(argv: list[str] | None = None) -> Settings:
    args = build_parser().parse_args(argv)
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
                nagiosplugin.Range(spec)
            except ValueError as exc:
                raise UsageError(f"{option} {spec!r} is not a threshold range: {exc}") from exc
    try:
        tests = select([item.strip() for item in args.tests.split(",") if item.strip()])
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
        verbose=min(args.verbose, 3), warning=args.warning, critical=args.critical)


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


def main(argv: list[str] | None = None) -> None:
    start = time.monotonic()
    try:
        settings = parse(argv)
    except UsageError as exc:
        print(f"{PLUGIN_NAME} UNKNOWN - {exc}")
        sys.exit(3)
    run(settings, start)


@nagiosplugin.guarded(verbose=0)
def run(settings: Settings, start: float) -> None:
    from .probe import RelayProbe
    from .session import Deadline
    from .verdict import CountContext, RelayContext, RelaySummary

    deadline = Deadline(max(settings.timeout - RESERVE, 0.1), start)
    one_domain = len(settings.domains) == 1 and not settings.hosts
    prefix = f"{settings.domains[0]}: " if one_domain else ""
    check = nagiosplugin.Check(
        RelayProbe(settings, deadline),
        RelayContext(settings.timeout, prefix),
        nagiosplugin.ScalarContext("time", settings.warning, settings.critical),
        CountContext(),
        RelaySummary(settings.verbose, settings.timeout),
    )
    check.name = PLUGIN_NAME
    # Long output carries the evidence even at the default verbosity, so the
    # library always runs at least at its level 1; our own levels pick the detail.
    check.main(verbose=max(1, settings.verbose), timeout=math.ceil(settings.timeout) + 1)
