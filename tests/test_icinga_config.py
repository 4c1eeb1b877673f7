"""The shipped Icinga 2 and Nagios configuration passes the real validators.

Each layout is validated the way docs/icinga.md installs it: dropped into a copy of the
packaged /etc/icinga2 (or next to the packaged Nagios objects).  Deliberately broken
copies must fail, which shows the validators really read the shipped files.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from icinga_helpers import (
    COMMAND_FILE,
    NAGIOS_DIR,
    SERVICES_FILE,
    distributed_tree,
    standalone_tree,
    validate_icinga,
    validate_nagios,
)

from plugin.cli import build_parser

# Skipped on a bare developer machine; in CI (where tests/run installs the packages) a
# missing validator must fail instead of hiding behind a skip.
pytestmark = pytest.mark.skipif(
    (shutil.which("icinga2") is None or shutil.which("nagios4") is None)
    and not os.environ.get("CI"),
    reason="icinga2 and nagios4 come from tests/apt-packages.txt")

# Options the CheckCommand leaves out on purpose: they make the plugin print and exit.
NOT_FOR_CHECKS = {"--help", "--version", "--list-tests"}


def blocks(listing: str) -> dict[str, str]:
    """`icinga2 object list` output split into {object name: its attribute lines}."""
    parts = re.split(r"^Object '([^']+)' of type '\w+':\n", listing, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def command_arguments() -> dict[str, str]:
    """{argument key: description} of the shipped CheckCommand."""
    text = COMMAND_FILE.read_text()
    found = {}
    for match in re.finditer(r'^\t\t"(-[^"]+)" = \{\n(.*?)^\t\t\}', text, re.M | re.S):
        description = re.search(r'^\t\t\tdescription = "(.*)"$', match.group(2), re.M)
        found[match.group(1)] = description.group(1) if description else ""
    return found


def test_command_has_one_argument_per_plugin_option_with_its_help() -> None:
    arguments = command_arguments()
    for action in build_parser()._actions:
        longs = [option for option in action.option_strings if option.startswith("--")]
        if not longs or longs[0] in NOT_FOR_CHECKS:
            continue
        if longs[0] == "--verbose":
            assert {"-v", "-vv", "-vvv"} <= arguments.keys()
            continue
        assert longs[0] in arguments, f"{longs[0]} missing from the CheckCommand"
        expected = action.help % {"default": action.default}
        assert arguments[longs[0]] == expected, longs[0]


def test_standalone_layout_validates_in_the_packaged_config(tmp_path: Path) -> None:
    tree = standalone_tree(tmp_path / "etc")
    done = validate_icinga(tree, tmp_path)
    assert done.returncode == 0, done.output
    assert "critical/" not in done.output

    services = blocks(done.objects("Service"))
    for name in ("mx1.example.org!open-relay", "mx2.example.org!open-relay",
                 "mail-domains!open-relay-domain-example.org",
                 "mail-domains!open-relay-domain-example.com"):
        assert name in services, sorted(services)
        assert '* check_command = "open_relay"' in services[name]
        assert "* check_interval = 3600" in services[name]
        assert "* max_check_attempts = 2" in services[name]
    domain = services["mail-domains!open-relay-domain-example.org"]
    assert '* open_relay_domain = "example.org"' in domain
    # The host raised the plugin deadline to 60 s; Icinga must wait longer than that.
    assert "* check_timeout = 70" in domain

    notifications = blocks(done.objects("Notification"))
    page = notifications["mx1.example.org!open-relay!open-relay-page"]
    assert re.search(r'\* user_groups = \[ "icingaadmins" \]', page)
    assert re.search(r'\* states = \[ "OK", "Critical" \]', page)
    assert re.search(r'\* types = \[ "Problem", "Recovery" \]', page)
    assert '"mail-oncall"' in notifications["mx2.example.org!open-relay!open-relay-page"]


def test_distributed_layout_validates_with_command_endpoint(tmp_path: Path) -> None:
    tree = distributed_tree(tmp_path / "etc")
    done = validate_icinga(tree, tmp_path, "-DNodeName=master.example.org")
    assert done.returncode == 0, done.output

    services = blocks(done.objects("Service"))
    for name in ("mx1.example.org!open-relay", "mail-domains!open-relay-domain-example.org"):
        assert '* command_endpoint = "probe.example.net"' in services[name]
        assert '* zone = "master"' in services[name]
    commands = blocks(done.objects("CheckCommand"))
    assert '* zone = "global-templates"' in commands["open_relay"]


def test_a_syntax_error_in_the_command_fails_validation(tmp_path: Path) -> None:
    tree = standalone_tree(tmp_path / "etc")
    copy = tree / "zones.d" / "global-templates" / COMMAND_FILE.name
    copy.write_text(copy.read_text().replace('"--to" = {', '"--to" = ', 1))
    done = validate_icinga(tree, tmp_path)
    assert done.returncode != 0
    assert COMMAND_FILE.name in done.output


def test_services_must_name_an_existing_command(tmp_path: Path) -> None:
    tree = standalone_tree(tmp_path / "etc")
    copy = tree / "conf.d" / SERVICES_FILE.name
    copy.write_text(copy.read_text().replace('check_command = "open_relay"',
                                             'check_command = "open_relay_typo"'))
    done = validate_icinga(tree, tmp_path)
    assert done.returncode != 0
    assert "open_relay_typo" in done.output


def test_command_endpoint_outside_a_zone_fails(tmp_path: Path) -> None:
    """Why docs/icinga.md sends distributed hosts to zones.d/master/, not conf.d/."""
    tree = distributed_tree(tmp_path / "etc")
    hosts = tree / "zones.d" / "master" / "open_relay-hosts.conf"
    hosts.rename(tree / "conf.d" / "open_relay-hosts.conf")
    done = validate_icinga(tree, tmp_path, "-DNodeName=master.example.org")
    assert done.returncode != 0
    assert "command endpoint requires a zone" in done.output


def test_nagios_files_validate_with_the_packaged_objects(tmp_path: Path) -> None:
    shipped = sorted(NAGIOS_DIR.glob("*.cfg"))
    done = validate_nagios(tmp_path, shipped)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"Total Errors:\s+0", done.stdout)
    assert re.search(r"Total Warnings:\s+0", done.stdout)
    assert re.search(r"Checked 3 services", done.stdout)


def test_a_broken_nagios_copy_fails(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for source in NAGIOS_DIR.glob("*.cfg"):
        text = source.read_text()
        # The services now name a command that is not defined anywhere.
        text = text.replace("check_command           check_open_relay\n",
                            "check_command           check_open_relay_typo\n")
        (broken / source.name).write_text(text)
    done = validate_nagios(tmp_path, sorted(broken.glob("*.cfg")))
    assert done.returncode != 0
    assert "check_open_relay_typo" in done.stdout

