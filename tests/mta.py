"""Real mail servers on loopback for the tests: Postfix, Exim and OpenSMTPD.

Each server gets its own folder (configuration, queue or spool, log) under a temporary
folder, listens on its own address in 127.0.1.0/24 (never 127.0.0.1:25), and is started
in the foreground as a child of the test, so that it can be stopped by its pid, always.
It runs in a private mount namespace whose /etc/resolv.conf names a loopback DNS server
that answers NXDOMAIN to everything: there is no DNS upstream here, and the outside
world must not see our queries either.  Relayed mail goes to `MailSink` only: every
configuration routes all non-local mail explicitly to it, so a real relay could not
reach anyone even if a test sent DATA (the plugin never does).

Postfix comes from its Debian package; Exim and OpenSMTPD conflict with it and are
unpacked beside the system by tests/setup.d/mtas.sh.  Servers need root (port 25,
users to drop privileges to, mount namespaces).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.rcode
import pytest

from plugin.battery import TEST_IDS

MTA_ROOT = Path(os.environ.get("CHECK_OPEN_RELAY_MTA_ROOT", "/opt/check-open-relay-test-mtas"))
EXIM = MTA_ROOT / "usr/sbin/exim4"
SMTPD = MTA_ROOT / "usr/sbin/smtpd"
POSTFIX = Path("/usr/sbin/postfix")
# OpenSMTPD's spool path is compiled in; each instance gets its own folder mounted on it.
SMTPD_SPOOL = Path("/var/spool/smtpd")

SINK_ADDRESS = "127.0.1.2"
SINK_PORT = 2525
DNS_ADDRESS = "127.0.1.53"
# "Closed" servers trust this address only.  No test connects from it, so the plugin
# is an untrusted outsider, as it is on the Internet (see untrusted_network()).
NEVER_A_CLIENT = "127.0.1.254"

START_SECONDS = 20.0   # a server that does not listen by then has failed
STOP_SECONDS = 5.0     # after SIGTERM, before SIGKILL
COMMAND_SECONDS = 30.0

_OUTCOME_LINE = re.compile(
    r"^\s+(?P<id>\S+)\s+(?P<outcome>accepted|refused|inconclusive|tempfail|untested)\s")


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("real MTAs need root (port 25, privilege separation, mount namespaces)")
    problem = _namespace_problem()
    if problem:
        pytest.skip(f"no private mount namespace for the MTAs' resolv.conf: {problem}")


@functools.cache
def _namespace_problem() -> str:
    """Why `isolated` cannot work here ("" when it can)."""
    try:
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                              capture_output=True, text=True, timeout=COMMAND_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode == 0:
        return ""
    return done.stderr.strip() or f"unshare exited {done.returncode}"


def client_address(server: str) -> str:
    """The source address the kernel picks to reach `server`: the client's address as
    the MTA sees it (127.0.0.1 for every 127.0.1.x here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((server, 9))   # UDP connect sends nothing; it only picks a route
        return probe.getsockname()[0]


def untrusted_network(server: str) -> str:
    """The network a closed fixture trusts, after checking that the client is outside it."""
    client = ipaddress.ip_address(client_address(server))
    network = ipaddress.ip_network(f"{NEVER_A_CLIENT}/32")
    assert client not in network, f"the client {client} would be trusted by {network}"
    return str(network)


def outcomes(stdout: str) -> dict[str, str]:
    """test id → outcome, from the plugin's `-v` lines "  <id> <outcome> <reply>"."""
    found: dict[str, str] = {}
    for line in stdout.splitlines():
        match = _OUTCOME_LINE.match(line)
        if match and match["id"] in TEST_IDS:
            found[match["id"]] = match["outcome"]
    return found


def with_outcome(stdout: str, outcome: str) -> set[str]:
    return {test for test, seen in outcomes(stdout).items() if seen == outcome}


# --- the sink and the resolver ------------------------------------------------------------


class _SinkHandler(socketserver.StreamRequestHandler):
    timeout = 10   # a stuck client must not keep a thread forever

    def handle(self) -> None:
        sink: MailSink = self.server.sink   # type: ignore[attr-defined]
        self._say("220 sink.test ESMTP sink")
        while line := self.rfile.readline():
            verb = line.decode("ascii", "replace").strip().split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self._say("250 sink.test")
            elif verb == "DATA":
                self._say("354 go ahead")
                body = []
                while (data := self.rfile.readline()) and data.rstrip(b"\r\n") != b".":
                    body.append(data)
                sink.messages.append(b"".join(body))
                self._say("250 2.0.0 swallowed")
            elif verb == "QUIT":
                self._say("221 2.0.0 bye")
                return
            else:   # MAIL, RCPT, RSET, NOOP: the sink takes everything
                self._say("250 2.0.0 ok")

    def _say(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")


class ThreadingServer(socketserver.ThreadingTCPServer):
    """A small threaded TCP server for the loopback sinks."""

    daemon_threads = True
    allow_reuse_address = True


class BackgroundServer:
    """A ThreadingServer serving in a thread of its own while the `with` block runs;
    handlers reach the owner as `self.server.sink`."""

    def serve(self, address: str, port: int,
              handler: type[socketserver.BaseRequestHandler]) -> None:
        self._server = ThreadingServer((address, port), handler)
        self._server.sink = self   # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class MailSink(BackgroundServer):
    """Where the relaying configurations send mail: swallows it and counts it."""

    def __init__(self, address: str = SINK_ADDRESS, port: int = SINK_PORT) -> None:
        self.address, self.port = address, port
        self.messages: list[bytes] = []
        self.serve(address, port, _SinkHandler)


class NxDomainResolver:
    """A DNS server that knows no name at all: every question gets NXDOMAIN."""

    def __init__(self, address: str = DNS_ADDRESS, port: int = 53) -> None:
        self.address = address
        self.queries: list[str] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((address, port))
        self._sock.settimeout(0.2)   # so that the loop sees the stop flag
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> NxDomainResolver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
                query = dns.message.from_wire(data)
            except TimeoutError:
                continue
            except dns.exception.DNSException:
                continue   # not a DNS query: nothing to answer
            self.queries.extend(str(question.name) for question in query.question)
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.NXDOMAIN)
            self._sock.sendto(response.to_wire(), peer)


# --- running a server ------------------------------------------------------------------


@dataclass
class Server:
    """A running MTA: where it listens and where it writes what it did."""

    kind: str
    address: str
    port: int
    home: Path
    logs: list[Path] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def log_text(self) -> str:
        texts = []
        for path in self.logs:
            with contextlib.suppress(OSError):
                texts.append(f"--- {path.name}\n{path.read_text(errors='replace')}")
        return "\n".join(texts)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def workspace(prefix: str) -> Path:
    """A fresh folder the servers' unprivileged users can traverse (pytest's are 0700)."""
    home = Path(tempfile.mkdtemp(prefix=f"check-open-relay-{prefix}-"))
    home.chmod(0o755)
    return home


def _port_in_use(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((address, port)) == 0


def _wait_listening(server: Server, deadline: float) -> None:
    assert server.process is not None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.kind} exited with {server.process.returncode} "
                               f"before listening:\n{server.log_tail()}")
        if _port_in_use(server.address, server.port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{server.kind} not listening on {server.address}:{server.port} "
                       f"after {START_SECONDS:g} s:\n{server.log_tail()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (its own session, see _start), then SIGKILL.

    The group holds only what this server forked (Postfix's daemons, Exim's and
    OpenSMTPD's children); its id is the pid the test started.
    """
    for sig, grace in ((signal.SIGTERM, STOP_SECONDS), (signal.SIGKILL, STOP_SECONDS)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; its children may still be finishing their SIGTERM, and
        # one that still holds the listening socket would block the next server on
        # the same address.  Zombies hold nothing: they wait for init to reap them.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        deadline = time.monotonic() + STOP_SECONDS
        while _live_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        return


def _live_members(group: int) -> list[int]:
    """Processes of a process group that are not zombies, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after ")".
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[2]) == group and fields[0] != "Z":
                members.append(int(stat.parent.name))
    return members


def isolated(argv: list[str], home: Path, binds: dict[Path, Path] | None = None) -> list[str]:
    """`argv` in a private mount namespace with our resolv.conf (and other binds) on top.

    The shell execs the server, so the pid stays the server's.
    """
    resolv = home / "resolv.conf"
    resolv.write_text(f"nameserver {DNS_ADDRESS}\noptions timeout:1 attempts:1\n")
    mounts = {resolv: Path("/etc/resolv.conf"), **(binds or {})}
    script = " && ".join(f"mount --bind '{source}' '{target}'"
                         for source, target in mounts.items())
    return ["unshare", "--mount", "--propagation", "private",
            "sh", "-c", f'{script} && exec "$@"', "isolated", *argv]


@contextlib.contextmanager
def _running(server: Server, argv: list[str]) -> Iterator[Server]:
    if _port_in_use(server.address, server.port):
        raise RuntimeError(f"{server.address}:{server.port} is already taken; "
                           "another test run or a leftover server?")
    output = server.home / "stdout.log"
    server.logs.append(output)
    with output.open("wb") as sink:
        server.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink,
                                          stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_listening(server, time.monotonic() + START_SECONDS)
        yield server
    finally:
        _stop(server.process)


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_SECONDS,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stdout}{done.stderr}")


@contextlib.contextmanager
def _home(kind: str) -> Iterator[Path]:
    home = workspace(kind)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


# --- Postfix ---------------------------------------------------------------------------

# What Debian's postinst writes for an "Internet Site", minus what a test cannot use.
POSTFIX_STOCK = {
    "compatibility_level": "3.6",
    "smtpd_banner": "$myhostname ESMTP $mail_name (Debian/GNU)",
    "biff": "no",
    "append_dot_mydomain": "no",
    "smtpd_relay_restrictions":
        "permit_mynetworks permit_sasl_authenticated defer_unauth_destination",
    "mydestination": "$myhostname, localhost",
    "inet_protocols": "ipv4",
}

_POSTFIX_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def _postconf(conf: Path, name: str) -> str:
    done = subprocess.run(["postconf", "-c", str(conf), "-h", name], capture_output=True,
                          text=True, timeout=COMMAND_SECONDS, check=True)
    return done.stdout.strip()


def _postfix_folders(conf: Path) -> None:
    """The queue's subfolders with the owners and modes of the package's postfix-files.

    `postfix check` would create them too, but takes seconds; this takes milliseconds.
    """
    table = Path(_postconf(conf, "meta_directory")) / "postfix-files"
    values = {name: _postconf(conf, name)
              for name in ("queue_directory", "mail_owner", "setgid_group")}
    for line in table.read_text().splitlines():
        fields = line.split(":")
        if len(fields) < 5 or fields[1] != "d" or not fields[0].startswith(
                "$queue_directory/"):
            continue
        folder = Path(values["queue_directory"]) / fields[0].removeprefix("$queue_directory/")
        owner = values["mail_owner"] if fields[2] == "$mail_owner" else fields[2]
        group = values["setgid_group"] if fields[3] == "$setgid_group" else None
        folder.mkdir(exist_ok=True)
        folder.chmod(int(fields[4], 8))
        shutil.chown(folder, owner, group)


@contextlib.contextmanager
def postfix(address: str, hostname: str, **params: str) -> Iterator[Server]:
    """Postfix with Debian's stock settings, `params` on top, on `address`:25.

    The smtpd listener is bound in master.cf: inet_interfaces would refuse an address
    that no interface carries, and 127.0.1.x is routed to lo without being on it.
    proxy_interfaces makes Postfix take [address] as its own literal, as it would
    with an address on an interface.  Chroot is off: the jail would need copies of
    system files.  All non-local mail goes to the sink (relayhost).
    """
    require_root()
    if not POSTFIX.exists():
        pytest.skip("postfix is not installed (tests/apt-packages.txt, tests/run)")
    with _home("postfix") as home:
        conf, queue, data = home / "conf", home / "queue", home / "data"
        conf.mkdir()
        queue.mkdir(mode=0o755)
        data.mkdir(mode=0o700)
        shutil.chown(data, "postfix")
        settings = {
            **POSTFIX_STOCK,
            "queue_directory": str(queue),
            "data_directory": str(data),
            "myhostname": hostname,
            "mydomain": hostname.partition(".")[2],
            "inet_interfaces": "loopback-only",
            "proxy_interfaces": address,
            "relayhost": f"[{SINK_ADDRESS}]:{SINK_PORT}",
            "maillog_file": str(home / "maillog"),
            "maillog_file_prefixes": str(home),
            "alias_maps": "",
            "alias_database": "",
            **params,
        }
        (conf / "main.cf").write_text(
            "".join(f"{name} = {value}\n" for name, value in settings.items()))
        (conf / "master.cf").write_text(
            f"{address}:25 inet n - n - - smtpd\n{_POSTFIX_SERVICES}")
        # Postfix waits, in 300 ms steps, until main.cf is a second old (it might be
        # half written); dating the files back spares every Postfix program that wait.
        past = time.time() - 10
        for name in ("main.cf", "master.cf"):
            os.utime(conf / name, (past, past))
        server = Server("postfix", address, 25, home, [home / "maillog"])
        _postfix_folders(conf)
        master = Path(_postconf(conf, "daemon_directory")) / "master"
        # -d: stay in the foreground, so the pid we hold is the master's.
        with _running(server, isolated([str(master), "-c", str(conf), "-d"], home)):
            yield server


def postfix_errors_per_connection(server: Server) -> list[int]:
    """Error replies per finished connection, from smtpd's "disconnect" log lines
    ("commands=16/23" is 16 successful of 23)."""
    counts = []
    for line in server.log_text().splitlines():
        match = re.search(r"disconnect from .* commands=(\d+)/(\d+)", line)
        # commands=0/0: a connection that sent nothing (the fixture's "listening?" probe).
        if match and match[2] != "0":
            counts.append(int(match[2]) - int(match[1]))
    return counts


# --- Exim ------------------------------------------------------------------------------

# The RCPT ACL of Exim's own configure.default (less its DKIM controls): outside
# senders may reach the local domains and relay_to_domains only.
EXIM_RCPT_ACL = r"""
acl_check_rcpt:
  accept  hosts         = :
  deny    domains       = +local_domains
          local_parts   = ^[.] : ^.*[@%!/|]
          message       = Restricted characters in address
  deny    domains       = !+local_domains
          local_parts   = ^[./|] : ^.*[@%!] : ^.*/\\.\\./
          message       = Restricted characters in address
  accept  local_parts   = postmaster
          domains       = +local_domains
  require verify        = sender
  accept  hosts         = +relay_from_hosts
          control       = submission
  accept  authenticated = *
          control       = submission
  require message       = relay not permitted
          domains       = +local_domains : +relay_to_domains
  require verify        = recipient
  accept
"""


@contextlib.contextmanager
def exim(address: str, hostname: str, relay_from_hosts: str,
         local_parts: str | None = None) -> Iterator[Server]:
    """Exim with configure.default's RCPT ACL on `address`:25.

    Every address routes to the sink through one manualroute router, so sender and
    recipient verification succeed without DNS: the local domains' mailboxes are the
    `local_parts` list (default: any local part), everything else is "remote" via the sink.
    TLS is not offered, which spares each connection a handshake and changes nothing
    the ACL decides.  `-C` names a file outside TRUSTED_CONFIG_LIST
    (/etc/exim4/trusted_configs): the daemon keeps root because its caller is root;
    the delivery process it re-executes logs "exim user lost privilege for using -C
    option" and runs as Debian-exim, which is all an SMTP delivery needs.
    """
    require_root()
    if not EXIM.exists():
        pytest.skip(f"exim is not unpacked in {MTA_ROOT} (run tests/setup.d/mtas.sh as root)")
    with _home("exim") as home:
        spool, log = home / "spool", home / "log"
        for folder in (spool, log):
            folder.mkdir()
            shutil.chown(folder, "Debian-exim", "Debian-exim")
        domain = hostname.partition(".")[2]
        mailboxes = f"  local_parts = {local_parts}\n" if local_parts else ""
        config = home / "exim.conf"
        config.write_text(f"""\
primary_hostname = {hostname}
# Exim re-executes itself to deliver; it is not at its compiled-in path.
exim_path = {EXIM}
domainlist local_domains = @ : localhost : {domain}
domainlist relay_to_domains =
hostlist relay_from_hosts = {relay_from_hosts}
acl_smtp_rcpt = acl_check_rcpt
local_interfaces = {address}
daemon_smtp_ports = 25
spool_directory = {spool}
log_file_path = {log}/%slog
pid_file_path = {home}/exim.pid
never_users = root
host_lookup =
rfc1413_hosts =
tls_advertise_hosts =
keep_environment =

begin acl
{EXIM_RCPT_ACL}
begin routers

local_mailboxes:
  driver = manualroute
  domains = +local_domains
{mailboxes}  transport = sink
  route_list = * {SINK_ADDRESS}

outside:
  driver = manualroute
  domains = ! +local_domains
  transport = sink
  route_list = * {SINK_ADDRESS}

begin transports

sink:
  driver = smtp
  port = {SINK_PORT}
""")
        config.chmod(0o644)   # Exim refuses a configuration others may write
        server = Server("exim", address, 25, home, [log / "mainlog", log / "rejectlog",
                                                    log / "paniclog"])
        _run([str(EXIM), "-C", str(config), "-bV"], "exim -bV (configuration check)")
        # -bdf: daemon in the foreground; -q not given: no queue runner (nothing queues).
        with _running(server, isolated([str(EXIM), "-C", str(config), "-bdf"], home)):
            yield server


# --- OpenSMTPD -------------------------------------------------------------------------


@contextlib.contextmanager
def opensmtpd(address: str, hostname: str, rules: str) -> Iterator[Server]:
    """OpenSMTPD on `address`:25 with the `match` rules given.

    Two actions are defined, both relaying to the sink: "local" for the server's own
    domain (standing in for mailbox delivery, whose helpers live at a compiled-in
    path) and "outbound" for everything else.  The spool path is compiled in, so each
    instance mounts its own folder over it in its namespace.
    """
    require_root()
    if not SMTPD.exists():
        pytest.skip(f"smtpd is not unpacked in {MTA_ROOT} (run tests/setup.d/mtas.sh as root)")
    if not SMTPD_SPOOL.is_dir():
        pytest.skip(f"{SMTPD_SPOOL} is missing (run tests/setup.d/mtas.sh as root)")
    with _home("opensmtpd") as home:
        spool = home / "spool"
        spool.mkdir(mode=0o711)
        spool.chmod(0o711)   # smtpd insists on exactly this mode
        config = home / "smtpd.conf"
        config.write_text(f"""\
listen on {address} port 25 hostname {hostname}
action "local" relay host smtp://{SINK_ADDRESS}:{SINK_PORT}
action "outbound" relay host smtp://{SINK_ADDRESS}:{SINK_PORT}
{rules}
""")
        server = Server("opensmtpd", address, 25, home)
        _run([str(SMTPD), "-n", "-f", str(config)], "smtpd -n (configuration check)")
        # -d: foreground, log to stderr (our stdout.log).
        argv = isolated([str(SMTPD), "-d", "-f", str(config)], home, {spool: SMTPD_SPOOL})
        with _running(server, argv):
            yield server
