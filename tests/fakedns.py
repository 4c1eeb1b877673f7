"""A tiny authoritative DNS server on loopback, answering from a dict, for domain checks."""

from __future__ import annotations

import socket
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

# name → {record type → [record texts]}; a name mapped to "SERVFAIL" fails every query.
Zone = dict[str, dict[str, list[str]] | str]


class FakeDNS:
    def __init__(self, zone: Zone, host: str = "127.0.0.1") -> None:
        self.zone = {name.lower().rstrip(".") + ".": records for name, records in zone.items()}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        self.queries: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeDNS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            self.sock.sendto(self.answer(query).to_wire(), peer)

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        records = self.zone.get(name)
        if records is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif records == "SERVFAIL":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif rdtype in records:
            response.answer.append(dns.rrset.from_text_list(
                question.name, 60, "IN", rdtype, records[rdtype]))
        return response
