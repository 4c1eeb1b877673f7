"""STARTTLS and implicit TLS against loopback servers with throwaway certificates."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import OUTSIDE, ROOT, PluginRun, plugin_command
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hostile import (
    ACCEPTED,
    HANG_UP,
    RELAY_DENIED,
    SILENCE,
    HostileServer,
    Peer,
    Script,
    assert_sane,
    multiline,
)

from plugin.battery import TEST_IDS
from plugin.runner import LANES_PER_TARGET

TOTAL = len(TEST_IDS)
EHLO_STARTTLS = multiline(250, "mx.hostile.test", "PIPELINING", "STARTTLS")
EHLO_AFTER_TLS = multiline(250, "mx.hostile.test", "PIPELINING")
MUST_TLS = "530 5.7.0 Must issue a STARTTLS command first"
READY = "220 2.0.0 Ready to start TLS"


# -- throwaway certificates --------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    cert: Path
    keyfile: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.keyfile)
        return context


def issue(folder: Path, label: str, issuer: Identity | None = None, expired: bool = False,
          ca: bool = False) -> Identity:
    """A certificate for 127.0.0.1, signed by `issuer` (None: by itself)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{label}.hostile.test")])
    now = datetime.datetime.now(datetime.UTC)
    not_after = now - datetime.timedelta(days=1) if expired else now + datetime.timedelta(days=1)
    builder = (x509.CertificateBuilder()
               .subject_name(name)
               .issuer_name(issuer.name if issuer else name)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=30))
               .not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    identity = Identity(name, key, folder / f"{label}.crt", folder / f"{label}.key")
    identity.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    identity.keyfile.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return identity


@dataclass(frozen=True)
class Certificates:
    ca: Identity
    good: Identity          # signed by the CA
    expired: Identity       # signed by the CA, expired yesterday
    self_signed: Identity


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certificates:
    folder = tmp_path_factory.mktemp("certs")
    ca = issue(folder, "ca", ca=True)
    return Certificates(ca, issue(folder, "good", ca), issue(folder, "expired", ca, expired=True),
                        issue(folder, "self-signed"))


def check(server: HostileServer, *extra: str, trust: Path | None = None,
          timeout: str = "5") -> PluginRun:
    """The plugin against `server`; `trust` is the only CA it trusts with --tls-verify."""
    command = plugin_command()
    env = dict(os.environ)
    if command[0] == sys.executable:   # the checkout's script, as conftest.run_plugin does
        env["PYTHONPATH"] = str(ROOT)
    if trust is not None:
        env["SSL_CERT_FILE"] = str(trust)
        env.pop("SSL_CERT_DIR", None)
    done = subprocess.run(
        [*command, "-H", "127.0.0.1", "-p", str(server.port), "--to", OUTSIDE,
         "-t", timeout, *extra], capture_output=True, text=True, timeout=30, env=env,
        stdin=subprocess.DEVNULL)
    result = PluginRun(done.returncode, done.stdout, done.stderr)
    assert_sane(result)
    return result


def tls_first(context: ssl.SSLContext | None, rcpt: str = ACCEPTED) -> Script:
    """A relay that refuses MAIL until STARTTLS, and relays after it."""
    return Script(ehlo=lambda peer, line: EHLO_AFTER_TLS if peer.tls else EHLO_STARTTLS,
                  starttls=READY, tls=context,
                  mail=lambda peer, line: "250 2.1.0 Ok" if peer.tls else MUST_TLS,
                  rcpt=rcpt)


# -- STARTTLS ----------------------------------------------------------------------------

def test_relay_behind_starttls_is_critical_with_starttls_auto(certs):
    with HostileServer(tls_first(certs.self_signed.server_context())) as server:
        result = check(server)
        lines = server.connections[0]
    assert result.returncode == 2, result.stdout
    assert f"relayed {TOTAL} of {TOTAL} attempts" in result.status_line
    assert lines[:3] == ["EHLO " + lines[0].split(" ")[1], "STARTTLS", lines[0]]


def test_relay_behind_starttls_is_not_ok_with_starttls_never(certs):
    with HostileServer(tls_first(certs.self_signed.server_context())) as server:
        result = check(server, "--starttls", "never")
        lines = server.connections[0]
    assert result.returncode == 1, result.stdout
    assert result.status_line.startswith(
        f"OPEN_RELAY WARNING - 127.0.0.1 no relay accepted, but {TOTAL} of {TOTAL} attempts "
        "undecided (MAIL FROM server demands STARTTLS first)")
    assert "STARTTLS" not in lines


def test_starttls_refused_is_tested_in_plain_text_and_says_so():
    script = Script(ehlo=EHLO_STARTTLS, starttls="454 4.7.0 TLS not available due to local "
                                                 "problem")
    with HostileServer(script) as server:
        result = check(server)
    assert result.returncode == 0, result.stdout
    assert result.status_line == f"OPEN_RELAY OK - 127.0.0.1 refused all {TOTAL} relay attempts"
    assert ("Note: STARTTLS failed (refused: 454 4.7.0 TLS not available due to local "
            "problem); tested without TLS") in result.long_output


def test_starttls_refused_with_starttls_always_is_unknown():
    script = Script(ehlo=EHLO_STARTTLS, starttls="454 4.7.0 TLS not available")
    with HostileServer(script) as server:
        result = check(server, "--starttls", "always")
    assert result.returncode == 3, result.stdout
    assert result.status_line == (
        "OPEN_RELAY UNKNOWN - STARTTLS refused: 454 4.7.0 TLS not available")


def test_starttls_not_offered_with_starttls_always_is_unknown():
    with HostileServer(Script()) as server:
        result = check(server, "--starttls", "always")
    assert result.returncode == 3, result.stdout
    assert result.status_line == "OPEN_RELAY UNKNOWN - STARTTLS not offered by the server"


def broken_handshake(peer: Peer, line: str) -> str:
    """Says yes to STARTTLS, then answers the TLS ClientHello in plain text."""
    peer.say(READY)
    peer.send(b"220 still talking plain text\r\n")
    return HANG_UP


def test_failed_handshake_falls_back_to_plain_text_like_a_spammer_would():
    script = tls_first(None, rcpt=RELAY_DENIED)
    script.starttls = broken_handshake
    with HostileServer(script) as server:
        result = check(server)
    assert result.returncode == 1, result.stdout
    assert "undecided (MAIL FROM server demands STARTTLS first)" in result.status_line
    assert "Note: STARTTLS failed (" in result.long_output
    assert "tested without TLS" in result.long_output


def test_failed_handshake_with_starttls_always_is_unknown():
    script = tls_first(None)
    script.starttls = broken_handshake
    with HostileServer(script) as server:
        result = check(server, "--starttls", "always")
    assert result.returncode == 3, result.stdout
    assert result.status_line.startswith("OPEN_RELAY UNKNOWN - TLS handshake: ")


def stalled_handshake(peer: Peer, line: str) -> str:
    peer.say(READY)
    return SILENCE


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "ssl"])
def test_stalled_handshake_is_unknown_in_time(implicit):
    if implicit:
        script = Script(banner=SILENCE)   # never answers the client's TLS hello
    else:
        script = tls_first(None)
        script.starttls = stalled_handshake
    started = time.monotonic()
    with HostileServer(script) as server:
        result = check(server, *(["--ssl"] if implicit else []), timeout="1")
    assert result.returncode == 3, result.stdout
    assert result.status_line == (
        "OPEN_RELAY UNKNOWN - TLS handshake with 127.0.0.1 unfinished after 1 s")
    assert time.monotonic() - started < 1 + 1


@pytest.mark.parametrize("which", ["self_signed", "expired", "good"])
def test_any_certificate_is_fine_without_tls_verify(certs, which):
    with HostileServer(tls_first(getattr(certs, which).server_context())) as server:
        result = check(server, trust=certs.ca.cert)
    assert result.returncode == 2, result.stdout


@pytest.mark.parametrize(("which", "reason"), [
    ("self_signed", "self.signed certificate"), ("expired", "certificate has expired")])
def test_untrusted_certificate_with_tls_verify_is_unknown_saying_why(certs, which, reason):
    with HostileServer(tls_first(getattr(certs, which).server_context())) as server:
        result = check(server, "--tls-verify", trust=certs.ca.cert)
        connections = len(server.peers)
    assert result.returncode == 3, result.stdout
    assert re.fullmatch(rf"OPEN_RELAY UNKNOWN - TLS handshake: certificate not trusted "
                        rf"\({reason}\)", result.status_line), result.status_line
    # No retreat to plain text when verification was asked for: only the lanes'
    # first connections, each refusing the certificate.
    assert connections <= LANES_PER_TARGET


def test_trusted_certificate_with_tls_verify_is_tested(certs):
    with HostileServer(tls_first(certs.good.server_context())) as server:
        result = check(server, "--tls-verify", trust=certs.ca.cert)
    assert result.returncode == 2, result.stdout


# -- implicit TLS (--ssl) ----------------------------------------------------------------

def test_implicit_tls_server_is_tested_with_ssl(certs):
    with HostileServer(Script(rcpt=ACCEPTED), tls=certs.self_signed.server_context()) \
            as server:
        result = check(server, "--ssl", "--tests", "plain")
    assert result.returncode == 2, result.stdout
    assert result.status_line == "OPEN_RELAY CRITICAL - 127.0.0.1 relayed 1 of 1 attempts (plain)"


def test_implicit_tls_with_tls_verify_and_a_self_signed_certificate_is_unknown(certs):
    with HostileServer(Script(), tls=certs.self_signed.server_context()) as server:
        result = check(server, "--ssl", "--tls-verify", trust=certs.ca.cert)
    assert result.returncode == 3, result.stdout
    assert re.fullmatch(r"OPEN_RELAY UNKNOWN - TLS handshake: certificate not trusted "
                        r"\(self.signed certificate\)", result.status_line), result.status_line


def test_ssl_against_a_plain_text_server_is_unknown_naming_the_handshake():
    with HostileServer(Script()) as server:
        result = check(server, "--ssl")
    assert result.returncode == 3, result.stdout
    assert result.status_line.startswith("OPEN_RELAY UNKNOWN - TLS handshake: ")
