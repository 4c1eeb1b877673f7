"""Where to connect: a host name or address given with -H, turned into addresses."""

from __future__ import annotations

import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


class TargetError(Exception):
    """The target cannot be resolved; nothing can be tested."""


@dataclass(frozen=True)
class Target:
    name: str        # as the user gave it, or the MX host name: a host name or an address
    address: str     # the address connected to
    port: int
    domain: str | None = None    # the mail domain this target serves, for -D

    @property
    def label(self) -> str:
        return self.address if self.name == self.address else f"{self.name} [{self.address}]"


@dataclass(frozen=True)
class Problem:
    """A name that could not be turned into something to test."""

    name: str
    reason: str
    fatal: bool       # True: nothing of that name could be tested (UNKNOWN), else WARNING


@dataclass
class TargetPlan:
    targets: list[Target] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    null_mx: list[str] = field(default_factory=list)     # domains that accept no mail
    skipped: int = 0                                       # over --max-targets


def ip_version(text: str) -> int | None:
    """4 or 6 for an IP address, None for anything else.

    An IPv6 zone index ("fe80::1%eth0") is refused: it cannot be written in an SMTP
    address literal, and text after "%" would go into the dialogue.
    """
    if "%" in text:
        return None
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return None


def resolve_host_system(name: str, port: int, family: int | None) -> list[Target]:
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
        raise TargetError(f"{name} has no {_kind(family)}address")
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


class DomainResolver:
    """MX and address look-ups with dnspython, each bounded by the check's deadline.

    Follows RFC 5321 section 5.1: MX hosts by preference, every address of each;
    no MX records means the domain itself is the mail host (implicit MX); a null MX
    (RFC 7505) means the domain accepts no mail at all.
    """

    def __init__(self, servers: list[tuple[str, int]], remaining) -> None:
        import dns.nameserver
        import dns.resolver

        self._dns = dns
        try:
            self.resolver = dns.resolver.Resolver(configure=not servers)
        except dns.resolver.NoResolverConfiguration as exc:
            raise TargetError("no DNS resolver configured (see --resolver)") from exc
        if servers:
            self.resolver.nameservers = [dns.nameserver.Do53Nameserver(address, port)
                                         for address, port in servers]
        self.remaining = remaining

    def _query(self, name: str, rdtype: str):
        """The answer's records; None when the name exists without such records."""
        dns = self._dns
        lifetime = self.remaining()
        if lifetime <= 0:
            raise TargetError(f"{name}: no DNS answer before the deadline")
        try:
            return list(self.resolver.resolve(name, rdtype, lifetime=lifetime, search=False))
        except dns.resolver.NoAnswer:
            return None
        except dns.resolver.NXDOMAIN as exc:
            raise TargetError(f"{name}: no such domain (NXDOMAIN)") from exc
        except dns.resolver.LifetimeTimeout as exc:
            raise TargetError(f"{name}: DNS timeout looking up {rdtype}") from exc
        except dns.resolver.NoNameservers as exc:
            raise TargetError(f"{name}: DNS failure looking up {rdtype} (SERVFAIL)") from exc
        except dns.exception.DNSException as exc:
            raise TargetError(f"{name}: DNS error looking up {rdtype}: {exc}") from exc

    def addresses(self, name: str, family: int | None) -> list[str]:
        found: list[str] = []
        for version, rdtype in ((4, "A"), (6, "AAAA")):
            if family in (None, version):
                found.extend(record.address for record in self._query(name, rdtype) or ())
        return found

    def mail_hosts(self, domain: str) -> list[str] | None:
        """MX host names by preference; [domain] for an implicit MX; None for a null MX."""
        records = self._query(domain, "MX")
        if records is None:
            return [domain]
        if len(records) == 1 and records[0].exchange.to_text() == ".":
            return None
        records.sort(key=lambda record: record.preference)
        return list(dict.fromkeys(record.exchange.to_text().rstrip(".").lower()
                                  for record in records))


def plan_targets(hosts: list[str], domains: list[str], port: int, family: int | None,
                 servers: list[tuple[str, int]], max_targets: int, remaining) -> TargetPlan:
    """Every address to test, in order, with the names that failed and why."""
    plan = TargetPlan()
    resolver = DomainResolver(servers, remaining) if domains or servers else None
    for host in hosts:
        try:
            if ip_version(host) is not None or resolver is None:
                plan.targets.extend(resolve_host_system(host, port, family))
            else:
                addresses = resolver.addresses(host.rstrip("."), family)
                if not addresses:
                    raise TargetError(f"{host} has no {_kind(family)}address")
                plan.targets.extend(Target(host, address, port) for address in addresses)
        except TargetError as exc:
            plan.problems.append(Problem(host, str(exc), fatal=True))
    for domain in domains:
        _plan_domain(plan, resolver, domain, port, family)
    unique = list(dict.fromkeys(plan.targets))
    seen: set[tuple[str, int]] = set()
    plan.targets = []
    for target in unique:
        if (target.address, target.port) not in seen:
            seen.add((target.address, target.port))
            plan.targets.append(target)
    plan.skipped = max(0, len(plan.targets) - max_targets)
    del plan.targets[max_targets:]
    return plan


def _plan_domain(plan: TargetPlan, resolver: DomainResolver, domain: str, port: int,
                 family: int | None) -> None:
    try:
        hosts = resolver.mail_hosts(domain)
    except TargetError as exc:
        plan.problems.append(Problem(domain, str(exc), fatal=True))
        return
    if hosts is None:
        plan.null_mx.append(domain)
        return
    def lookup(host: str) -> list[str] | TargetError:
        try:
            return resolver.addresses(host, family)
        except TargetError as exc:
            return exc

    # Each MX host's look-ups wait on the network: ask for all of them at once.
    with ThreadPoolExecutor(max_workers=min(len(hosts), 8)) as pool:
        answers = list(pool.map(lookup, hosts))
    found = False
    for host, addresses in zip(hosts, answers, strict=True):
        if isinstance(addresses, TargetError):
            plan.problems.append(Problem(host, str(addresses), fatal=False))
            continue
        if not addresses:
            plan.problems.append(Problem(host, f"MX host {host} of {domain} has no "
                                               f"{_kind(family)}address", fatal=False))
        found = found or bool(addresses)
        plan.targets.extend(Target(host, address, port, domain) for address in addresses)
    if not found:
        plan.problems.append(Problem(domain, f"no mail host of {domain} has an address",
                                     fatal=True))


def _kind(family: int | None) -> str:
    return f"IPv{family} " if family else ""
