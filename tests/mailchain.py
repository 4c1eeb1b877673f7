"""A real test mailbox on loopback for the --deliver tests: Dovecot and a Maildir sink.

    open MTA (tests/mta.py) --relayhost--> MaildirSink 127.0.6.2:2525 --writes--> Maildir
    plugin --imaps 127.0.6.3:1993 or imap+STARTTLS 127.0.6.3:1143--> Dovecot --reads--> Maildir

Dovecot (Debian's dovecot-imapd) runs in the foreground as a child of the test with its
own configuration, state and sockets in a temporary folder and a passwd-file user, on
this suite's own address range 127.0.6.0/24 and non-default ports, so that it never
meets a system Dovecot.  It is stopped by its pid.  The sink is a few lines of SMTP
that stands for the final MTA: it adds a Received line and drops each message into the
Maildir the way a delivery agent does (tmp/, then a rename into new/).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mta import BackgroundServer, require_root, workspace

DOVECOT = Path("/usr/sbin/dovecot")
IMAP_ADDRESS = "127.0.6.3"
IMAP_PORT = 1143        # STARTTLS
IMAPS_PORT = 1993       # TLS from the first byte
SINK_ADDRESS = "127.0.6.2"
SINK_PORT = 2525
USER = "relaytest"
PASSWORD = "Sesame-8x41-only-for-tests"   # also what the tests look for in any output
MAIL_USER = "nobody"    # Dovecot's mail processes run as this user (never root)
MAIL_GROUP = "nogroup"
START_SECONDS = 20.0
STOP_SECONDS = 5.0


# --- certificates ----------------------------------------------------------------------


def certificates(folder: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for IMAP_ADDRESS.  The plugin
    trusts the CA through SSL_CERT_FILE, as an admin with a private CA would."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailbox test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=True, content_commitment=False, key_encipherment=False,
              data_encipherment=False, key_agreement=False, key_cert_sign=True,
              crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imap.test")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(IMAP_ADDRESS))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "imap.pem", folder / "imap.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


# --- Dovecot ---------------------------------------------------------------------------


@dataclass
class ImapServer:
    home: Path
    maildir: Path
    ca: Path
    password_file: Path
    process: subprocess.Popen[bytes] | None = None

    def url(self, tls: bool = True) -> str:
        return (f"imaps://{USER}@{IMAP_ADDRESS}:{IMAPS_PORT}/INBOX" if tls
                else f"imap://{USER}@{IMAP_ADDRESS}:{IMAP_PORT}/INBOX")

    def messages(self) -> list[Path]:
        """Every message file in the mailbox, delivered (new/) or seen (cur/)."""
        return sorted(path for folder in ("new", "cur")
                      for path in (self.maildir / folder).iterdir())

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            text = (self.home / "dovecot.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""


def _dovecot_conf(home: Path, ca_paths: tuple[Path, Path, Path]) -> str:
    _, cert, key = ca_paths
    return f"""\
protocols = imap
listen = {IMAP_ADDRESS}
base_dir = {home}/run
state_dir = {home}/state
instance_name = check-open-relay-{home.name}
log_path = {home}/dovecot.log
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = yes
auth_mechanisms = plain
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {home}/passwd
}}
userdb {{
  driver = static
  args = uid={MAIL_USER} gid={MAIL_GROUP} home={home}/mail/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    address = {IMAP_ADDRESS}
    port = {IMAP_PORT}
  }}
  inet_listener imaps {{
    address = {IMAP_ADDRESS}
    port = {IMAPS_PORT}
    ssl = yes
  }}
}}
"""


def _listening(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((address, port)) == 0


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to Dovecot's process group (its own session), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=STOP_SECONDS)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def dovecot() -> Iterator[ImapServer]:
    """Dovecot serving USER's Maildir over IMAP (STARTTLS) and IMAPS on IMAP_ADDRESS."""
    require_root()
    if not DOVECOT.exists():
        pytest.skip("dovecot is not installed (dovecot-imapd in tests/apt-packages.txt)")
    for port in (IMAP_PORT, IMAPS_PORT):
        if _listening(IMAP_ADDRESS, port):
            raise RuntimeError(f"{IMAP_ADDRESS}:{port} is already taken; a leftover Dovecot?")
    home = workspace("dovecot")
    try:
        ca_paths = certificates(home)
        maildir = home / "mail" / USER / "Maildir"
        for folder in ("tmp", "new", "cur"):
            (maildir / folder).mkdir(parents=True)
        for path in (home / "mail", home / "mail" / USER, maildir,
                     *(maildir / folder for folder in ("tmp", "new", "cur"))):
            shutil.chown(path, MAIL_USER, MAIL_GROUP)
        (home / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
        (home / "passwd").chmod(0o600)
        shutil.chown(home / "passwd", "dovecot")   # its auth process reads it
        password_file = home / "relaytest.pass"
        password_file.write_text(f"{PASSWORD}\n")
        password_file.chmod(0o600)
        conf = home / "dovecot.conf"
        conf.write_text(_dovecot_conf(home, ca_paths))
        server = ImapServer(home, maildir, ca_paths[0], password_file)
        with (home / "stdout.log").open("wb") as output:
            server.process = subprocess.Popen(
                [str(DOVECOT), "-F", "-c", str(conf)], stdin=subprocess.DEVNULL,
                stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + START_SECONDS
            while not all(_listening(IMAP_ADDRESS, port) for port in (IMAP_PORT, IMAPS_PORT)):
                if server.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dovecot did not start:\n"
                                       f"{(home / 'stdout.log').read_text()}"
                                       f"{server.log_tail()}")
                time.sleep(0.05)
            yield server
        finally:
            _stop(server.process)
    finally:
        shutil.rmtree(home, ignore_errors=True)


# --- the sink that delivers ----------------------------------------------------------------


class _SinkHandler(socketserver.StreamRequestHandler):
    timeout = 10   # a stuck client must not keep a thread forever

    def handle(self) -> None:
        sink: MaildirSink = self.server.sink   # type: ignore[attr-defined]
        helo = "unknown"
        self._say("220 sink.mailbox.test ESMTP")
        while line := self.rfile.readline():
            words = line.decode("ascii", "replace").strip().split(" ", 1)
            verb = words[0].upper()
            if verb in ("EHLO", "HELO"):
                helo = words[1] if len(words) > 1 else helo
                self._say("250 sink.mailbox.test")
            elif verb == "DATA":
                self._say("354 go ahead")
                body = []
                while (data := self.rfile.readline()) and data.rstrip(b"\r\n") != b".":
                    body.append(data[1:] if data.startswith(b"..") else data)
                sink.deliver(helo, self.client_address[0], b"".join(body))
                self._say("250 2.0.0 delivered to the Maildir")
            elif verb == "QUIT":
                self._say("221 2.0.0 bye")
                return
            else:   # MAIL, RCPT, RSET, NOOP: every recipient is the test mailbox
                self._say("250 2.0.0 ok")

    def _say(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")


@dataclass
class MaildirSink(BackgroundServer):
    """The final MTA of the chain: every message it receives lands in `maildir`."""

    maildir: Path
    address: str = SINK_ADDRESS
    port: int = SINK_PORT
    delivered: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.serve(self.address, self.port, _SinkHandler)
        self._lock = threading.Lock()

    def deliver(self, helo: str, peer: str, message: bytes) -> None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
        received = (f"Received: from {helo} ([{peer}])\r\n"
                    f"\tby sink.mailbox.test with SMTP; {stamp}\r\n").encode()
        with self._lock:
            self.delivered.append(message)
            name = f"{time.time():.6f}.{len(self.delivered)}.sink.mailbox.test"
        temporary = self.maildir / "tmp" / name
        temporary.write_bytes(received + message)
        shutil.chown(temporary, MAIL_USER, MAIL_GROUP)
        temporary.rename(self.maildir / "new" / name)
