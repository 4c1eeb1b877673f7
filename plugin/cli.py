"""Command line → validated Settings → the nagiosplugin Check."""

from __future__ import annotations

import argparse
import math
import sys
import time

from . import __version__
from .errors import UsageError

# Only what parsing needs is imported up front: --version and --help must stay cheap,
# since Icinga satellites start this plugin thousands of times a day.

PLUGIN_NAME = "OPEN_RELAY"
DEFAULT_TIMEOUT = 30.0   # seconds; leaves headroom under Icinga's 60 s check timeout
DEFAULT_FOREIGN_LITERAL = "192.0.2.1"   # TEST-NET-1: never a real destination
# Kept back from -t so that QUIT and printing still fit in the deadline.
RESERVE = 0.3

DESCRIPTION = """\
Tests whether a mail server relays mail from an outside sender to an outside
recipient.  It runs a battery of relay tricks (null sender, spoofed local senders,
percent hack, source routes, bang paths, quoted and double-@ forms, address
literals) and stops each at RCPT TO: no message is sent (no DATA), unless
--deliver asks for proof with one labelled test message per accepted attempt.

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
  messages      with --deliver: test messages the servers took
  confirmed     with --verify-imap: test messages found in the mailbox
  delivery_delay
                seconds the slowest of them took to arrive

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
        from .battery import BATTERY

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
    _add_proof_options(parser.add_argument_group(
        "proving a relay (opt-in: sends real test messages)"))
    return parser


def _add_proof_options(group: argparse._ArgumentGroup) -> None:
    add = group.add_argument
    add("--deliver", action="store_true",
        help="for each attempt the server accepted, complete the transaction with one "
             "short, labelled test message to --to (never more than one per test form); "
             "without it no message is ever sent")
    add("--max-messages", type=int, default=5, metavar="N",
        help="with --deliver, send at most N test messages per run (default: %(default)s)")
    add("--verify-imap", metavar="URL",
        help="with --deliver, look for the test messages in this mailbox and delete them: "
             "imaps://USER@HOST[:PORT]/MAILBOX, or imap:// with STARTTLS")
    add("--imap-password-file", metavar="FILE",
        help="file holding the --verify-imap password on one line")
    add("--imap-password-env", metavar="NAME",
        help="environment variable holding the --verify-imap password")
    add("--verify-wait", type=float, default=20.0, metavar="SECONDS",
        help="with --verify-imap, wait up to SECONDS for the test messages, within the "
             "-t deadline (default: %(default)g)")
    add("--unconfirmed-state", choices=("warning", "critical", "ok"), default="warning",
        help="state when the server accepted a relay attempt but its test message was "
             "refused or not delivered in time: accept-then-discard is not a relay "
             "(default: %(default)s)")
    add("--evidence-dir", metavar="DIR",
        help="when a relay attempt is accepted, write one evidence file per server into "
             "DIR: transcripts, and the headers of delivered test messages")


def main(argv: list[str] | None = None) -> None:
    start = time.monotonic()
    try:
        args = build_parser().parse_args(argv)
        from .settings import validate

        settings = validate(args)
    except UsageError as exc:
        print(f"{PLUGIN_NAME} UNKNOWN - {exc}")
        sys.exit(3)

    import nagiosplugin

    nagiosplugin.guarded(verbose=0)(run)(settings, start)


def run(settings, start: float) -> None:
    import nagiosplugin

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
