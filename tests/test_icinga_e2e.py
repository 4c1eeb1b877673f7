"""A real Icinga 2 runs the shipped CheckCommand against fake mail servers on loopback.

One daemon in the foreground with the API on 127.0.3.1, the shipped command, service and
notification files copied in unchanged, and check_open_relay (this checkout) at
PluginContribDir.  Checks are forced through the REST API and the results read back
through it, then compared with what the plugin prints when run by hand with the very
argv Icinga used.
"""

from __future__ import annotations

import itertools
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import run_plugin
from fakedns import FakeDNS
from fakesmtp import Behaviour, FakeSMTP, open_relay
from icinga_helpers import (
    COMMAND_FILE,
    NOTIFICATIONS_FILE,
    SERVICES_FILE,
    IcingaNode,
    free_port,
    issue_cert,
    logged_argvs,
    make_ca,
    node_config,
    pages_sent,
    write_notification_recorder,
    write_plugin_wrapper,
)

pytestmark = pytest.mark.skipif(shutil.which("icinga2") is None,
                                reason="icinga2 comes from tests/apt-packages.txt")

API_HOST = "127.0.3.1"
CLOSED, OPEN, GREYLISTING, OPTIONS = "127.0.3.10", "127.0.3.11", "127.0.3.12", "127.0.3.13"
DNS_HOST = "127.0.3.53"
RECIPIENT = "relaytest@relay.example.net"
DOMAIN = "relay.test"


def greylisting(sender: str, recipient: str) -> str:
    return "450 4.2.0 Greylisted, please try again later"


def host_objects(resolver: str) -> str:
    """Hosts as an admin would write them, using only the variables docs/icinga.md names."""
    return f"""
object Host "mx-closed" {{
  check_command = "dummy"
  address = "{CLOSED}"
  vars.mail_server = true
  vars.open_relay_to = "{RECIPIENT}"
}}
object Host "mx-open" {{
  check_command = "dummy"
  address = "{OPEN}"
  vars.mail_server = true
  vars.open_relay_to = "{RECIPIENT}"
}}
object Host "mx-greylisting" {{
  check_command = "dummy"
  address = "{GREYLISTING}"
  vars.mail_server = true
  vars.open_relay_to = "{RECIPIENT}"
}}
object Host "mx-options" {{
  check_command = "dummy"
  address = "{OPTIONS}"
  vars.mail_server = true
  vars.open_relay_to = "{RECIPIENT}"
  // A string, as the Director or the API would store it.
  vars.open_relay_verbose = "2"
  vars.open_relay_tests = [ "plain", "null-sender" ]
  vars.open_relay_ipv4 = true
  vars.open_relay_port = 25
  vars.open_relay_starttls = "never"
  vars.open_relay_timeout = 12
}}
object Host "mx-no-recipient" {{
  check_command = "dummy"
  address = "{CLOSED}"
  vars.mail_server = true
}}
object Host "mail-domains" {{
  check_command = "dummy"
  vars.mail_domains = [ "{DOMAIN}" ]
  vars.open_relay_to = "{RECIPIENT}"
  vars.open_relay_resolver = "{resolver}"
}}
"""


def stock_stand_ins(recorder: Path) -> str:
    """What the packaged conf.d provides and the shipped notification file relies on."""
    return f"""
object TimePeriod "24x7" {{
  ranges = {{
    monday = "00:00-24:00"
    tuesday = "00:00-24:00"
    wednesday = "00:00-24:00"
    thursday = "00:00-24:00"
    friday = "00:00-24:00"
    saturday = "00:00-24:00"
    sunday = "00:00-24:00"
  }}
}}
object UserGroup "icingaadmins" {{ }}
object User "oncall" {{
  groups = [ "icingaadmins" ]
  email = "oncall@e2e.test"
}}
object NotificationCommand "mail-service-notification" {{
  command = [ "{recorder}" ]
  env = {{
    TYPE = "$notification.type$"
    SERVICE = "$host.name$!$service.name$"
    STATE = "$service.state$"
    OUTPUT = "$service.output$"
    USER = "$user.name$"
  }}
}}
"""


@dataclass
class Site:
    icinga: IcingaNode
    argv_log: Path
    pages: Path
    smtp: dict[str, FakeSMTP]
    results: dict[str, dict[str, Any]]


SERVICES = ("mx-closed!open-relay", "mx-open!open-relay", "mx-greylisting!open-relay",
            "mx-options!open-relay", "mx-no-recipient!open-relay",
            f"mail-domains!open-relay-domain-{DOMAIN}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("icinga-e2e")
    node = IcingaNode("icinga-e2e.test", base, API_HOST, free_port(API_HOST))
    issue_cert(make_ca(base / "ca"), node.name, base / "data" / "certs")
    argv_log = base / "argv.jsonl"
    plugins = base / "plugins"
    write_plugin_wrapper(plugins, argv_log)
    pages = base / "pages"
    recorder = write_notification_recorder(base / "record-page", pages)

    zones = (f'object Endpoint "{node.name}" {{ }}\n'
             f'object Zone "master" {{ endpoints = [ "{node.name}" ] }}\n'
             'object Zone "global-templates" { global = true }\n')
    node_config(node, zones=zones, plugin_dir=plugins,
                features='object CheckerComponent "checker" { }\n'
                         'object NotificationComponent "notification" { }\n')
    # The shipped files, unchanged, where docs/icinga.md puts them on a single node.
    shutil.copy(COMMAND_FILE, node.etc / "zones.d" / "global-templates")
    shutil.copy(SERVICES_FILE, node.etc / "conf.d")
    shutil.copy(NOTIFICATIONS_FILE, node.etc / "conf.d")

    smtp = {address: FakeSMTP(behaviour, host=address, port=25)
            for address, behaviour in ((CLOSED, Behaviour()),
                                       (OPEN, Behaviour(rcpt=open_relay)),
                                       (GREYLISTING, Behaviour(rcpt=greylisting)),
                                       (OPTIONS, Behaviour()))}
    zone = {DOMAIN: {"MX": [f"10 mx.{DOMAIN}."]}, f"mx.{DOMAIN}": {"A": [OPEN]}}
    with FakeDNS(zone, host=DNS_HOST) as dns:
        (node.etc / "conf.d" / "e2e.conf").write_text(
            host_objects(dns.address) + stock_stand_ins(recorder))
        started = [server.__enter__() for server in smtp.values()]
        try:
            node.start()
            node.wait_for_api(timeout=30)
            asked = {name: node.check_now(name) for name in SERVICES}
            results = {name: node.result_after(name, asked[name], timeout=60)
                       for name in SERVICES}
            yield Site(node, argv_log, pages, smtp, results)
        finally:
            node.stop()
            for server in started:
                server.stop()


def argv_for(site: Site, option: str, value: str) -> list[str]:
    matching = [argv for argv in logged_argvs(site.argv_log)
                if (option, value) in itertools.pairwise(argv)]
    assert matching, logged_argvs(site.argv_log)
    return matching[-1]


def perfdata(items: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items)


def assert_same_as_by_hand(site: Site, service: str, argv: list[str]) -> None:
    """Icinga's view of the check equals the plugin's own output for the same argv."""
    result = site.results[service]["last_check_result"]
    by_hand = run_plugin(*argv)
    assert result["exit_status"] == by_hand.returncode
    assert result["state"] == by_hand.returncode
    # Icinga keeps the status line and the long output and moves the perfdata out; the
    # plugin's last line holds only perfdata, so its line break stays behind.
    printed = "".join(line for line in by_hand.stdout.splitlines(keepends=True)
                      if not line.startswith("|"))
    assert result["output"] == printed
    through_icinga = perfdata(result["performance_data"])
    printed_perf = {label.strip("'"): value for label, value in by_hand.perfdata.items()}
    assert through_icinga.keys() == printed_perf.keys()
    for label, value in printed_perf.items():
        if label.endswith("time"):   # durations differ from run to run
            assert re.fullmatch(r"[0-9.]+s;;;0(;.*)?", through_icinga[label]), label
        else:
            assert through_icinga[label] == value, label


def test_closed_server_is_ok(site: Site) -> None:
    argv = argv_for(site, "--hostname", CLOSED)
    assert argv[argv.index("--to") + 1] == RECIPIENT
    assert argv[argv.index("--timeout") + 1] == "30"
    assert not {"-v", "-vv", "-vvv", "--domain"} & set(argv)
    assert site.results["mx-closed!open-relay"]["state"] == 0
    assert_same_as_by_hand(site, "mx-closed!open-relay", argv)


def test_open_relay_is_critical_with_the_dialogue_in_icinga(site: Site) -> None:
    attrs = site.results["mx-open!open-relay"]
    output = attrs["last_check_result"]["output"]
    assert attrs["state"] == 2
    assert output.startswith("OPEN_RELAY CRITICAL - ")
    # The proof, at the command's default verbosity.
    assert f"C: RCPT TO:<{RECIPIENT}>" in output
    assert "S: 250 2.1.5 Ok" in output
    assert_same_as_by_hand(site, "mx-open!open-relay", argv_for(site, "--hostname", OPEN))


def test_greylisting_is_warning(site: Site) -> None:
    assert site.results["mx-greylisting!open-relay"]["state"] == 1
    assert_same_as_by_hand(site, "mx-greylisting!open-relay",
                           argv_for(site, "--hostname", GREYLISTING))


def test_host_vars_become_plugin_options(site: Site) -> None:
    argv = argv_for(site, "--hostname", OPTIONS)
    assert "-vv" in argv and "-v" not in argv and "-vvv" not in argv
    assert argv[argv.index("--tests") + 1] == "plain,null-sender"
    assert argv[argv.index("--starttls") + 1] == "never"
    assert argv[argv.index("--port") + 1] == "25"
    assert argv[argv.index("--timeout") + 1] == "12"
    assert "--use-ipv4" in argv and "--use-ipv6" not in argv
    attrs = site.results["mx-options!open-relay"]
    # The apply rule keeps Icinga's kill timer above the plugin's own deadline.
    assert attrs["check_timeout"] == 22
    assert attrs["last_check_result"]["command"][1:] == argv
    assert_same_as_by_hand(site, "mx-options!open-relay", argv)


def test_domain_service_passes_the_domain_and_no_host(site: Site) -> None:
    service = f"mail-domains!open-relay-domain-{DOMAIN}"
    argv = argv_for(site, "--domain", DOMAIN)
    assert "--hostname" not in argv
    assert argv[argv.index("--resolver") + 1].startswith(DNS_HOST + ":")
    attrs = site.results[service]
    # The MX host is the open relay.
    assert attrs["state"] == 2, attrs["last_check_result"]["output"]
    assert_same_as_by_hand(site, service, argv)


def test_missing_recipient_is_unknown_without_running_the_plugin(site: Site) -> None:
    result = site.results["mx-no-recipient!open-relay"]["last_check_result"]
    assert result["state"] == 3
    assert "open_relay_to" in result["output"] and "missing" in result["output"]
    assert not [argv for argv in logged_argvs(site.argv_log) if "--to" not in argv]


def test_only_critical_pages_with_the_dialogue(site: Site) -> None:
    node = site.icinga
    critical = {"mx-open!open-relay", f"mail-domains!open-relay-domain-{DOMAIN}"}
    # A new service's first problem is a hard state at once, so the first round of
    # checks has already notified; WARNING and UNKNOWN must not have paged.
    assert site.results["mx-greylisting!open-relay"]["state_type"] == 1
    assert site.results["mx-no-recipient!open-relay"]["state_type"] == 1
    node.wait_until("pages for the relays",
                    lambda: {page["SERVICE"] for page in pages_sent(site.pages)} >= critical, 30)
    time.sleep(1)   # the same chance for a page that must not come
    pages = pages_sent(site.pages)
    assert sorted(page["SERVICE"] for page in pages) == sorted(critical), pages
    for page in pages:
        assert page["TYPE"] == "PROBLEM" and page["STATE"] == "CRITICAL"
        assert page["USER"] == "oncall"
        assert f"C: RCPT TO:<{RECIPIENT}>" in page["OUTPUT"]
        assert page["OUTPUT"] == site.results[page["SERVICE"]]["last_check_result"]["output"]


def test_recovery_pages_and_a_new_relay_is_retested_first(site: Site) -> None:
    node = site.icinga
    service = "mx-open!open-relay"
    server = site.smtp[OPEN]

    def check() -> dict[str, Any]:
        return node.result_after(service, node.check_now(service))

    def pages_for_service() -> list[dict[str, str]]:
        return [page for page in pages_sent(site.pages) if page["SERVICE"] == service]

    node.wait_until("the first page", pages_for_service, 30)
    server.behaviour = Behaviour()
    assert check()["state"] == 0
    node.wait_until("the recovery page", lambda: len(pages_for_service()) == 2, 30)
    assert pages_for_service()[-1]["TYPE"] == "RECOVERY"

    server.behaviour = Behaviour(rcpt=open_relay)
    first = check()
    # max_check_attempts = 2: one soft CRITICAL, no page yet...
    assert (first["state"], first["state_type"]) == (2, 0)
    time.sleep(1)
    assert len(pages_for_service()) == 2
    # ...and the re-test makes it hard and pages.
    second = check()
    assert (second["state"], second["state_type"]) == (2, 1)
    node.wait_until("the second problem page", lambda: len(pages_for_service()) == 3, 30)
    assert pages_for_service()[-1]["TYPE"] == "PROBLEM"
