"""Real Icinga 2 and Nagios daemons run the shipped configuration against fake mail servers.

Icinga 2: one daemon in the foreground with the API on 127.0.3.1, the shipped command,
service and notification files copied in unchanged, and check_open_relay (this checkout)
at PluginContribDir.  Checks are forced through the REST API and the results read back
through it, then compared with what the plugin prints when run by hand with the very
argv Icinga used.  A master and a satellite then run the command_endpoint path, with
the CheckCommand reaching the satellite by config sync.

Nagios 4: the shipped command and service definitions, checks forced through the
command pipe and read back from status.dat.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import run_plugin
from fakedns import FakeDNS
from fakesmtp import Behaviour, FakeSMTP, open_relay
from icinga_helpers import (
    COMMAND_FILE,
    NAGIOS_DIR,
    NOTIFICATIONS_FILE,
    SERVICES_FILE,
    IcingaNode,
    NagiosNode,
    free_port,
    issue_cert,
    logged_argvs,
    make_ca,
    nagios_config,
    node_config,
    pages_sent,
    write_notification_recorder,
    write_plugin_wrapper,
)

# Skipped on a bare developer machine; in CI (where tests/run installs the packages) a
# missing daemon must fail instead of hiding behind a skip.
pytestmark = pytest.mark.skipif(shutil.which("icinga2") is None and not os.environ.get("CI"),
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
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One throwaway CA for every node of this module (making one takes seconds)."""
    return make_ca(tmp_path_factory.mktemp("icinga-ca"))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, ca: Path) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("icinga-e2e")
    node = IcingaNode("icinga-e2e.test", base, API_HOST, free_port(API_HOST))
    issue_cert(ca, node.name, base / "data" / "certs")
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
    (node.etc / "zones.d" / "global-templates").mkdir()
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
        with ExitStack() as stack:
            for server in smtp.values():
                stack.enter_context(server)
            stack.callback(node.stop)
            node.start()
            node.wait_for_api(timeout=30)
            asked = {name: node.check_now(name) for name in SERVICES}
            results = {name: node.result_after(name, asked[name], timeout=60)
                       for name in SERVICES}
            yield Site(node, argv_log, pages, smtp, results)


def argv_for_log(log: Path, option: str, value: str) -> list[str]:
    """The last argv the plugin was started with that has option set to value."""
    matching = [argv for argv in logged_argvs(log) if (option, value) in itertools.pairwise(argv)]
    assert matching, logged_argvs(log)
    return matching[-1]


def argv_for(site: Site, option: str, value: str) -> list[str]:
    return argv_for_log(site.argv_log, option, value)


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
    # Unset variables leave their options out entirely.
    assert not {"-v", "-vv", "-vvv", "--domain", "--tests", "--port", "--use-ipv4",
                "--ssl", "--tls-verify"} & set(argv)
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
    argv = argv_for(site, "--hostname", OPEN)
    # ...with no -v from the command: the evidence is there at the default level.
    assert not {"-v", "-vv", "-vvv"} & set(argv)
    assert_same_as_by_hand(site, "mx-open!open-relay", argv)


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


# --- a master and a satellite: the command_endpoint path of docs/icinga.md ------------

SATELLITE_API = "127.0.3.2"
CLUSTER_OPEN, CLUSTER_CLOSED = "127.0.3.20", "127.0.3.21"
# Results the master writes itself while the satellite is not (yet) able to run the check.
NOT_YET = re.compile(r"not connected|does not exist|Remote Icinga instance", re.I)


@dataclass
class Cluster:
    master: IcingaNode
    satellite: IcingaNode
    satellite_argv_log: Path
    master_argv_log: Path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, ca: Path) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("icinga-cluster")
    master = IcingaNode("master.e2e.test", base / "master", API_HOST, free_port(API_HOST))
    satellite = IcingaNode("probe.e2e.test", base / "probe", SATELLITE_API,
                           free_port(SATELLITE_API))
    for node in (master, satellite):
        issue_cert(ca, node.name, node.base / "data" / "certs")

    def zones(master_host: str) -> str:
        return (f'object Endpoint "{master.name}" {{ {master_host} }}\n'
                f'object Endpoint "{satellite.name}" {{ }}\n'
                f'object Zone "master" {{ endpoints = [ "{master.name}" ] }}\n'
                f'object Zone "mail-probe" {{ parent = "master"; '
                f'endpoints = [ "{satellite.name}" ] }}\n'
                'object Zone "global-templates" { global = true }\n')

    # The master has no plugin at all: a result can only come from the satellite.
    master_argv_log = base / "master-argv.jsonl"
    (base / "master-plugins").mkdir()
    node_config(master, zones=zones(""), plugin_dir=base / "master-plugins",
                features='object CheckerComponent "checker" { }\n')
    satellite_argv_log = base / "probe-argv.jsonl"
    write_plugin_wrapper(base / "probe-plugins", satellite_argv_log)
    # The satellite connects to the master, as an outside probe behind NAT would.
    node_config(satellite, zones=zones(f'host = "{API_HOST}"; port = {master.api_port}'),
                plugin_dir=base / "probe-plugins",
                features='object CheckerComponent "checker" { }\n',
                api_extra="  accept_config = true\n  accept_commands = true\n")

    # Shipped files where docs/icinga.md puts them on a distributed config master; the
    # satellite gets the CheckCommand only through the config sync of global-templates.
    (master.etc / "zones.d" / "global-templates").mkdir()
    shutil.copy(COMMAND_FILE, master.etc / "zones.d" / "global-templates")
    master_zone = master.etc / "zones.d" / "master"
    master_zone.mkdir()
    shutil.copy(SERVICES_FILE, master_zone)
    shutil.copy(NOTIFICATIONS_FILE, master_zone)
    (master_zone / "e2e-hosts.conf").write_text("".join(f"""
object Host "{name}" {{
  check_command = "dummy"
  address = "{address}"
  vars.mail_server = true
  vars.open_relay_to = "{RECIPIENT}"
  vars.open_relay_endpoint = "{satellite.name}"
}}
""" for name, address in (("relay-far", CLUSTER_OPEN), ("closed-far", CLUSTER_CLOSED))))
    (master.etc / "conf.d" / "stand-ins.conf").write_text(
        stock_stand_ins(write_notification_recorder(base / "record-page", base / "pages")))

    servers = [FakeSMTP(Behaviour(rcpt=open_relay), host=CLUSTER_OPEN, port=25),
               FakeSMTP(Behaviour(), host=CLUSTER_CLOSED, port=25)]
    with ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        # Stopped in reverse order: satellite, then master, then the servers.
        stack.callback(master.stop)
        stack.callback(satellite.stop)
        # Master first, so the satellite's first connection attempt succeeds instead of
        # waiting for the ten-second reconnect timer.
        master.start()
        master.wait_for_api(timeout=30)
        satellite.start()
        satellite.wait_for_api(timeout=30)
        master.wait_until("the satellite to connect", lambda: master.api(
            "GET", f"/v1/objects/endpoints/{satellite.name}")["results"][0]["attrs"]["connected"],
            timeout=30)
        # The satellite validates the synced zone and restarts itself to load it.
        satellite.wait_until("the synced CheckCommand", lambda: satellite.api(
            "GET", "/v1/objects/checkcommands/open_relay")["results"], timeout=60)
        master.wait_until("the satellite to reconnect", lambda: master.api(
            "GET", f"/v1/objects/endpoints/{satellite.name}")["results"][0]["attrs"]["connected"],
            timeout=30)
        yield Cluster(master, satellite, satellite_argv_log, master_argv_log)


def remote_result(cluster: Cluster, service: str, timeout: float = 60) -> dict[str, Any]:
    """Force checks on the master until one was really executed by the satellite.

    A check forced while the satellite is (re)connecting either gets no result at all
    (the master waits for the endpoint) or an UNKNOWN written by the master itself; both
    only mean "ask again".
    """
    master = cluster.master

    def executed() -> dict[str, Any] | None:
        asked = master.check_now(service)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            attrs = master.fresh_result(service, asked)
            if attrs:
                return None if NOT_YET.search(attrs["last_check_result"]["output"]) else attrs
            time.sleep(0.2)
        return None
    return master.wait_until(f"{service} run by the satellite", executed, timeout)


def test_command_endpoint_runs_the_check_on_the_satellite(cluster: Cluster) -> None:
    relay = remote_result(cluster, "relay-far!open-relay")
    result = relay["last_check_result"]
    assert relay["state"] == 2, result["output"]
    assert result["check_source"] == cluster.satellite.name
    assert f"C: RCPT TO:<{RECIPIENT}>" in result["output"]
    argv = argv_for_log(cluster.satellite_argv_log, "--hostname", CLUSTER_OPEN)
    assert argv[argv.index("--to") + 1] == RECIPIENT

    closed = remote_result(cluster, "closed-far!open-relay")
    assert closed["state"] == 0, closed["last_check_result"]["output"]
    assert closed["last_check_result"]["check_source"] == cluster.satellite.name
    assert not cluster.master_argv_log.exists()

    # The CheckCommand reached the satellite by config sync, not by a local file.
    synced = cluster.satellite.api("GET", "/v1/objects/checkcommands/open_relay")
    assert synced["results"][0]["attrs"]["zone"] == "global-templates"
    assert not (cluster.satellite.etc / "zones.d" / "global-templates" /
                COMMAND_FILE.name).exists()


# --- Nagios Core 4 with the shipped command and service definitions -----------------

NAGIOS_OPEN, NAGIOS_CLOSED, NAGIOS_NO_RECIPIENT = "127.0.3.40", "127.0.3.41", "127.0.3.43"
NAGIOS_DNS = "127.0.3.54"
NAGIOS_DOMAIN = "relay-nagios.test"


def test_nagios_runs_the_shipped_commands(tmp_path: Path) -> None:
    if shutil.which("nagios4") is None and not os.environ.get("CI"):
        pytest.skip("nagios4 comes from tests/apt-packages.txt")
    argv_log = tmp_path / "argv.jsonl"
    write_plugin_wrapper(tmp_path / "plugins", argv_log)
    zone = {NAGIOS_DOMAIN: {"MX": [f"10 mx.{NAGIOS_DOMAIN}."]},
            f"mx.{NAGIOS_DOMAIN}": {"A": [NAGIOS_OPEN]}}
    servers = [FakeSMTP(Behaviour(rcpt=open_relay), host=NAGIOS_OPEN, port=25),
               FakeSMTP(Behaviour(), host=NAGIOS_CLOSED, port=25)]
    with FakeDNS(zone, host=NAGIOS_DNS) as dns:
        hosts = tmp_path / "hosts.cfg"
        hosts.write_text("".join(f"""
define host {{
    use                     linux-server,open-relay-mail-server
    host_name               {name}
    address                 {address}
    check_command           return-ok
{extra}}}
""" for name, address, extra in (
            ("mx-open", NAGIOS_OPEN, f"    _OPEN_RELAY_TO          {RECIPIENT}\n"),
            ("mx-closed", NAGIOS_CLOSED, f"    _OPEN_RELAY_TO          {RECIPIENT}\n"),
            ("mx-no-recipient", NAGIOS_NO_RECIPIENT, ""))) + f"""
define host {{
    use                     linux-server
    host_name               mail-domains
    address                 127.0.3.42
    check_command           return-ok
    _OPEN_RELAY_TO          {RECIPIENT}
    _OPEN_RELAY_STARTTLS    auto
    _OPEN_RELAY_TIMEOUT     20
}}
define service {{
    use                     open-relay-service
    host_name               mail-domains
    service_description     Open relay {NAGIOS_DOMAIN}
    check_command           check_open_relay_domain!{NAGIOS_DOMAIN}!--resolver {dns.address}
}}
define contact {{
    use                     open-relay-pager
    contact_name            oncall
    pager                   oncall@e2e.test
    contactgroups           open-relay-pagers
}}
""")
        shipped = [NAGIOS_DIR / "open_relay-commands.cfg", NAGIOS_DIR / "open_relay-services.cfg"]
        config = nagios_config(
            tmp_path, [*shipped, hosts],
            # Results are reaped and status.dat written every second, not every ten.
            "check_result_reaper_frequency=1", "status_update_interval=1",
            "check_external_commands=1", "command_check_interval=-1",
            # Pages would go through /usr/bin/mail; this test is about the checks.
            "enable_notifications=0",
            plugin_dir=str(tmp_path / "plugins"))
        nagios = NagiosNode(tmp_path, config)
        with ExitStack() as stack:
            for server in servers:
                stack.enter_context(server)
            stack.callback(nagios.stop)
            nagios.start()
            results = {name: nagios.check_now(*name.split("!"))
                       for name in ("mx-open!Open relay", "mx-closed!Open relay",
                                    "mx-no-recipient!Open relay",
                                    f"mail-domains!Open relay {NAGIOS_DOMAIN}")}
            # By hand while the fake servers still run.
            check_nagios_results(results, argv_log)


def check_nagios_results(results: dict[str, dict[str, str]], argv_log: Path) -> None:
    for name, address in (("mx-open!Open relay", NAGIOS_OPEN),
                          ("mx-closed!Open relay", NAGIOS_CLOSED)):
        argv = argv_for_log(argv_log, "--hostname", address)
        assert argv == ["--hostname", address, "--to", RECIPIENT, "--port", "25",
                        "--starttls", "auto", "--timeout", "30"]
        assert_nagios_same_as_by_hand(results[name], argv)
    assert results["mx-open!Open relay"]["current_state"] == "2"
    assert f"C: RCPT TO:<{RECIPIENT}>" in results["mx-open!Open relay"]["long_plugin_output"]
    assert results["mx-closed!Open relay"]["current_state"] == "0"

    domain = results[f"mail-domains!Open relay {NAGIOS_DOMAIN}"]
    argv = argv_for_log(argv_log, "--domain", NAGIOS_DOMAIN)
    assert "--hostname" not in argv and argv[argv.index("--timeout") + 1] == "20"
    assert domain["current_state"] == "2", domain["plugin_output"]
    assert_nagios_same_as_by_hand(domain, argv)

    # Nagios turns the undefined $_HOSTOPEN_RELAY_TO$ into a lone "$".
    assert argv_for_log(argv_log, "--hostname", NAGIOS_NO_RECIPIENT)[2:4] == ["--to", "$"]
    missing = results["mx-no-recipient!Open relay"]
    assert missing["current_state"] == "3"
    assert missing["plugin_output"] == (
        "OPEN_RELAY UNKNOWN - --to '$' is not a plain mail address (user@domain)")


def assert_nagios_same_as_by_hand(status: dict[str, str], argv: list[str]) -> None:
    by_hand = run_plugin(*argv)
    assert status["current_state"] == str(by_hand.returncode)
    assert status["plugin_output"] == by_hand.status_line
    # status.dat keeps the long output on one line with escaped line breaks; the line
    # break before the plugin's perfdata-only last line stays with the long output.
    long_output = status["long_plugin_output"].replace("\\n", "\n")
    assert long_output == (by_hand.long_output + "\n" if by_hand.long_output else "")
    printed = {label.strip("'"): value for label, value in by_hand.perfdata.items()}
    recorded = {label.strip("'"): value for label, value in
                (item.split("=", 1) for item in status["performance_data"].split())}
    assert recorded.keys() == printed.keys()
    for label, value in printed.items():
        if not label.endswith("time"):
            assert recorded[label] == value, label
