"""Where to connect: a host name or address given with -H, turned into addresses."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass


class TargetError(Exception):
    """The target cannot be resolved; nothing can be tested."""


@dataclass(frozen=True)
class Target:
    name: str        # as the user gave it: a host name or an address
    address: str     # the address connected to
    port: int

    @property
    def label(self) -> str:
        return self.address if self.name == self.address else f"{self.name} [{self.address}]"


def ip_version(text: str) -> int | None:
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return None


def resolve_host(name: str, port: int, family: int | None) -> list[Target]:
    """Addresses of -H, in the system resolver's order (honours /etc/hosts, like check_smtp).

    `family` is 4, 6 or None for either.
    """
    version = ip_version(name)
    if version is not None:
        if family is not None and family != version:
            raise TargetError(f"{name} is not an IPv{family} address")
        return [Target(name, str(ipaddress.ip_address(name)), port)]
    af = {4: socket.AF_INET, 6: socket.AF_INET6}.get(family or 0, socket.AF_UNSPEC)
    try:
        infos = socket.getaddrinfo(name, port, af, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TargetError(f"cannot resolve {name}: {exc.strerror}") from exc
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        kind = f"IPv{family} " if family else ""
        raise TargetError(f"{name} has no {kind}address")
    return [Target(name, address, port) for address in addresses]


def derive_domain(host: str) -> str:
    """mx1.example.org → example.org; a two-label name is its own domain."""
    if host.startswith("["):
        return host
    labels = host.split(".")
    return ".".join(labels[1:]) if len(labels) > 2 else host


def delivered_locally(recipient: str, host: str, domain: str, literal: str = "") -> bool:
    """Whether the target is final destination for the recipient's domain.

    Such a recipient makes every relay test "succeed" (nmap reports closed servers
    as open relays this way).
    """
    rcpt_domain = recipient.rpartition("@")[2].rstrip(".").lower()
    if rcpt_domain in {host.lower(), domain.lower()}:
        return True
    rcpt_address = _literal_address(rcpt_domain)
    return rcpt_address is not None and rcpt_address == _literal_address(literal)


def local_recipient_message(recipient: str) -> str:
    return (f"--to {recipient} is in the target's own domain, so the server would deliver "
            "it locally: use a recipient at an outside domain")


def _literal_address(text: str) -> str | None:
    inner = text.strip("[]")
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None
