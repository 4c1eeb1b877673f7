"""Throwaway Icinga 2 and Nagios trees for validating and running the shipped config.

Everything lives under one temporary directory: the daemons are pointed at it with
-DConfiguration.* defines (Icinga 2) or a private nagios.cfg (Nagios), so nothing under
/etc or /var is touched and no systemd is needed.
"""

from __future__ import annotations

import base64
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "icinga-conf"
COMMAND_FILE = CONF / "zones.d" / "global-templates" / "open_relay-command.conf"
SERVICES_FILE = CONF / "conf.d" / "open_relay-services.conf"
NOTIFICATIONS_FILE = CONF / "conf.d" / "open_relay-notifications.conf"
EXAMPLES = CONF / "examples"
NAGIOS_DIR = CONF / "nagios"

# The distribution's own configuration, as the package installs it: the shipped files
# must work when dropped into exactly this.
STOCK_ICINGA = Path("/etc/icinga2")
STOCK_NAGIOS_OBJECTS = Path("/etc/nagios4/objects")
STOCK_NAGIOS_PLUGIN_COMMANDS = Path("/etc/nagios-plugins/config")
PLUGIN_DIR = "/usr/lib/nagios/plugins"



def stop_group(proc: subprocess.Popen | None) -> None:
    """End a daemon started in a session of its own, with whatever it forked."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass

def run_as() -> dict[str, str]:
    """Environment that makes icinga2 keep the current user instead of switching to nagios."""
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    return dict(os.environ, ICINGA2_USER=user, ICINGA2_GROUP=group)


def directory_defines(base: Path, config_dir: Path) -> list[str]:
    """-D options that move every directory Icinga 2 reads or writes under base."""
    dirs = {
        "ConfigDir": config_dir,
        # ZonesDir is derived from ConfigDir before defines are applied.
        "ZonesDir": config_dir / "zones.d",
        "DataDir": base / "data",
        "CacheDir": base / "cache",
        "LogDir": base / "log",
        "SpoolDir": base / "spool",
        "InitRunDir": base / "run",
        "PidPath": base / "run" / "icinga2.pid",
        "ModAttrPath": base / "data" / "modified-attributes.conf",
    }
    for name in ("DataDir", "CacheDir", "LogDir", "SpoolDir", "InitRunDir"):
        dirs[name].mkdir(parents=True, exist_ok=True)
    return [f"-DConfiguration.{name}={path}" for name, path in dirs.items()]


def icinga2(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["icinga2", *args], capture_output=True, text=True, timeout=timeout,
                          env=run_as(), stdin=subprocess.DEVNULL)


# --- offline validation ------------------------------------------------------------

def stock_tree(dest: Path) -> Path:
    """A copy of the packaged /etc/icinga2, without enabled features.

    Features are left out because they are the local admin's business and the api
    feature needs certificates that a validation tree has no use for.
    """
    shutil.copytree(STOCK_ICINGA, dest, symlinks=True,
                    ignore=shutil.ignore_patterns("features-enabled", "pki"))
    (dest / "features-enabled").mkdir()
    return dest


def standalone_tree(dest: Path) -> Path:
    """Shipped files where docs/icinga.md puts them on a single node."""
    tree = stock_tree(dest)
    templates = tree / "zones.d" / "global-templates"
    templates.mkdir(parents=True, exist_ok=True)
    shutil.copy(COMMAND_FILE, templates)
    for source in (SERVICES_FILE, NOTIFICATIONS_FILE, EXAMPLES / "open_relay-hosts.conf"):
        shutil.copy(source, tree / "conf.d")
    return tree


def distributed_tree(dest: Path) -> Path:
    """Shipped files where docs/icinga.md puts them on a config master with a satellite."""
    tree = stock_tree(dest)
    shutil.copy(EXAMPLES / "distributed" / "zones.conf", tree / "zones.conf")
    templates = tree / "zones.d" / "global-templates"
    master = tree / "zones.d" / "master"
    templates.mkdir(parents=True, exist_ok=True)
    master.mkdir(parents=True)
    shutil.copy(COMMAND_FILE, templates)
    for source in (SERVICES_FILE, NOTIFICATIONS_FILE,
                   EXAMPLES / "distributed" / "open_relay-hosts.conf"):
        shutil.copy(source, master)
    return tree


@dataclass
class Validation:
    returncode: int
    output: str
    base: Path

    def objects(self, kind: str) -> str:
        """`icinga2 object list` over what the validation dumped."""
        done = icinga2(["object", "list", "--type", kind,
                        f"-DConfiguration.CacheDir={self.base / 'cache'}"])
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


def validate_icinga(tree: Path, base: Path, *defines: str) -> Validation:
    args = ["daemon", "--validate", "-c", str(tree / "icinga2.conf"),
            *directory_defines(base, tree), *defines]
    done = icinga2(args)
    return Validation(done.returncode, done.stdout + done.stderr, base)


def nagios_config(base: Path, object_files: list[Path], *extra: str,
                  plugin_dir: str = PLUGIN_DIR) -> Path:
    """A private nagios.cfg: the stock objects plus object_files, all state under base."""
    spool = base / "checkresults"
    spool.mkdir(parents=True, exist_ok=True)
    (base / "resource.cfg").write_text(f"$USER1$={plugin_dir}\n")
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    lines = [
        f"log_file={base / 'nagios.log'}",
        f"cfg_dir={STOCK_NAGIOS_PLUGIN_COMMANDS}",
        *(f"cfg_file={STOCK_NAGIOS_OBJECTS / name}"
          for name in ("commands.cfg", "contacts.cfg", "timeperiods.cfg", "templates.cfg")),
        *(f"cfg_file={path}" for path in object_files),
        f"resource_file={base / 'resource.cfg'}",
        f"check_result_path={spool}",
        f"lock_file={base / 'nagios.pid'}",
        f"temp_file={base / 'nagios.tmp'}",
        f"status_file={base / 'status.dat'}",
        f"object_cache_file={base / 'objects.cache'}",
        f"precached_object_file={base / 'objects.precache'}",
        f"query_socket={base / 'nagios.qh'}",
        f"command_file={base / 'nagios.cmd'}",
        # The pre-flight check tests that this user can write the spool directory.
        f"nagios_user={user}",
        f"nagios_group={group}",
        "illegal_macro_output_chars=`~$&|'\"<>",
        *extra,
    ]
    config = base / "nagios.cfg"
    config.write_text("\n".join(lines) + "\n")
    return config


def validate_nagios(base: Path, object_files: list[Path]) -> subprocess.CompletedProcess[str]:
    """`nagios4 -v` over the stock objects plus object_files, with a private nagios.cfg."""
    config = nagios_config(base, object_files)
    return subprocess.run(["nagios4", "-v", str(config)], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


@dataclass
class NagiosNode:
    """Nagios Core 4 in the foreground with its config and state under base."""

    base: Path
    config: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        with (self.base / "console.log").open("ab") as log:
            self.proc = subprocess.Popen(["nagios4", str(self.config)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def stop(self) -> None:
        stop_group(self.proc)

    def log_tail(self, lines: int = 30) -> str:
        log = self.base / "nagios.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def command(self, line: str, timeout: float = 10) -> None:
        """One external command through the command pipe, once Nagios reads it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                # Non-blocking: opening a pipe nobody reads yet fails instead of hanging.
                fd = os.open(self.base / "nagios.cmd", os.O_WRONLY | os.O_NONBLOCK)
                break
            except (FileNotFoundError, OSError):
                if time.monotonic() > deadline:
                    raise AssertionError("Nagios never opened its command pipe:\n"
                                         + self.log_tail()) from None
                time.sleep(0.2)
        try:
            os.write(fd, f"[{int(time.time())}] {line}\n".encode())
        finally:
            os.close(fd)

    def services(self) -> dict[str, dict[str, str]]:
        """servicestatus blocks of status.dat, by "host!service"."""
        path = self.base / "status.dat"
        found: dict[str, dict[str, str]] = {}
        if not path.exists():
            return found
        for block in path.read_text(errors="replace").split("servicestatus {")[1:]:
            fields = dict(line.strip().split("=", 1) for line in block.split("}")[0].splitlines()
                          if "=" in line)
            found[f"{fields['host_name']}!{fields['service_description']}"] = fields
        return found

    def check_now(self, host: str, service: str, timeout: float = 30) -> dict[str, str]:
        """Force a check and return its status once Nagios has recorded the result."""
        asked = int(time.time())
        self.command(f"SCHEDULE_FORCED_SVC_CHECK;{host};{service};{asked}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("nagios4 exited:\n" + self.log_tail())
            status = self.services().get(f"{host}!{service}")
            if status and int(status["last_check"]) >= asked and status["has_been_checked"] == "1":
                return status
            time.sleep(0.2)
        raise AssertionError(f"no result for {host}!{service}:\n" + self.log_tail())


# --- running daemons -----------------------------------------------------------------

def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def make_ca(base: Path) -> Path:
    """A throwaway Icinga CA; returns the DataDir whose ca/ holds it."""
    data = base / "data"
    data.mkdir(parents=True, exist_ok=True)
    done = icinga2(["pki", "new-ca", f"-DConfiguration.DataDir={data}"])
    assert done.returncode == 0, done.stdout + done.stderr
    return data


def issue_cert(ca_data: Path, name: str, certs: Path) -> None:
    """Key and CA-signed certificate for endpoint name, where an ApiListener looks for them."""
    certs.mkdir(parents=True, exist_ok=True)
    key, csr, crt = (certs / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    for args in (["pki", "new-cert", "--cn", name, "--key", str(key), "--csr", str(csr)],
                 ["pki", "sign-csr", f"-DConfiguration.DataDir={ca_data}", "--csr", str(csr),
                  "--cert", str(crt)]):
        done = icinga2(args)
        assert done.returncode == 0, done.stdout + done.stderr
    shutil.copy(ca_data / "ca" / "ca.crt", certs / "ca.crt")


def write_plugin_wrapper(directory: Path, argv_log: Path) -> Path:
    """check_open_relay that runs this checkout with this interpreter and logs its argv.

    The argv log lets the tests see exactly which options the CheckCommand produced.
    """
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "check_open_relay"
    wrapper.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"with open({str(argv_log)!r}, 'a') as log:\n"
        "    log.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "sys.argv[0] = 'check_open_relay'\n"
        "from plugin.cli import main\n"
        "main()\n")
    wrapper.chmod(0o755)
    return wrapper


def logged_argvs(argv_log: Path) -> list[list[str]]:
    if not argv_log.exists():
        return []
    return [json.loads(line) for line in argv_log.read_text().splitlines() if line]


@dataclass
class IcingaNode:
    """One Icinga 2 daemon in the foreground, with its own tree under base."""

    name: str
    base: Path
    api_host: str
    api_port: int
    password: str = "e2e-secret"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def etc(self) -> Path:
        return self.base / "etc"

    @property
    def console_log(self) -> Path:
        return self.base / "console.log"

    @property
    def url(self) -> str:
        return f"https://{self.api_host}:{self.api_port}"

    def start(self) -> None:
        args = ["icinga2", "daemon", "-c", str(self.etc / "icinga2.conf"),
                *directory_defines(self.base, self.etc)]
        with self.console_log.open("ab") as log:
            # A session of its own, so stop() can end the umbrella process, the worker it
            # forks and any running plugin together.
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=run_as(),
                                         start_new_session=True)

    def stop(self) -> None:
        stop_group(self.proc)

    def log_tail(self, lines: int = 40) -> str:
        if not self.console_log.exists():
            return ""
        return "\n".join(self.console_log.read_text(errors="replace").splitlines()[-lines:])

    def api(self, method: str, path: str, body: dict[str, Any] | None = None,
            timeout: float = 10) -> dict[str, Any]:
        context = ssl.create_default_context()
        # The throwaway CA is nobody's trust anchor; the test only needs the channel.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        token = base64.b64encode(f"e2e:{self.password}".encode()).decode()
        request = urllib.request.Request(
            self.url + path, method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Accept": "application/json", "Authorization": f"Basic {token}",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return json.load(response)

    def wait_until(self, what: str, probe: Callable[[], Any], timeout: float) -> Any:
        """Poll probe until it returns something truthy; fail with the daemon's log."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"icinga2 {self.name} exited with {self.proc.returncode}:\n"
                                     + self.log_tail())
            try:
                result = probe()
            except (urllib.error.URLError, OSError, KeyError, IndexError) as exc:
                last_error = exc
                result = None
            if result:
                return result
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} "
                             f"(last error: {last_error}):\n{self.log_tail()}")

    def wait_for_api(self, timeout: float = 30) -> None:
        self.wait_until("the API", lambda: self.api("GET", "/v1/status/IcingaApplication"),
                        timeout)

    def service(self, full_name: str) -> dict[str, Any]:
        reply = self.api("GET", "/v1/objects/services/" + urllib.request.quote(full_name))
        return reply["results"][0]["attrs"]

    def check_now(self, full_name: str) -> float:
        """Force a check through the REST API; returns the time it was asked for."""
        host, service = full_name.split("!", 1)
        asked = time.time()
        reply = self.api("POST", "/v1/actions/reschedule-check", {
            "type": "Service",
            "filter": "host.name == h && service.name == s",
            "filter_vars": {"h": host, "s": service},
            "force": True,
        })
        assert reply["results"] and reply["results"][0]["code"] == 200, reply
        return asked

    def fresh_result(self, full_name: str, asked: float) -> dict[str, Any] | None:
        """The service attributes if a check started at or after asked has reported."""
        attrs = self.service(full_name)
        result = attrs.get("last_check_result")
        if result and result["execution_start"] >= asked:
            return attrs
        return None

    def result_after(self, full_name: str, asked: float, timeout: float = 60) -> dict[str, Any]:
        """The service attributes once a check result newer than asked has arrived."""
        return self.wait_until(f"a check result for {full_name}",
                               lambda: self.fresh_result(full_name, asked), timeout)


def write_notification_recorder(path: Path, pages: Path) -> Path:
    """A notification 'pager' that files each notification as JSON under pages."""
    pages.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"#!{sys.executable}\n"
        "import json, os, time, uuid\n"
        "keys = ('TYPE', 'SERVICE', 'STATE', 'OUTPUT', 'USER')\n"
        # Named by time first, so that pages_sent() lists them in the order sent.
        "name = f'{time.time_ns():020d}-{uuid.uuid4().hex}.json'\n"
        f"target = os.path.join({str(pages)!r}, name)\n"
        "with open(target, 'w') as page:\n"
        "    json.dump({key: os.environ.get(key, '') for key in keys}, page)\n")
    path.chmod(0o755)
    return path


def pages_sent(pages: Path) -> list[dict[str, str]]:
    return [json.loads(path.read_text()) for path in sorted(pages.glob("*.json"))]


def node_config(node: IcingaNode, *, zones: str, plugin_dir: Path, features: str,
                api_extra: str = "") -> None:
    """icinga2.conf, constants, zones and features of a node; conf.d/ and zones.d/ are
    left to the caller."""
    etc = node.etc
    # No zones.d/global-templates here: a node that has that directory counts as the
    # zone's config master and ignores what its parent syncs.
    (etc / "conf.d").mkdir(parents=True, exist_ok=True)
    (etc / "zones.d").mkdir(parents=True, exist_ok=True)
    (etc / "icinga2.conf").write_text(
        'include "constants.conf"\n'
        'include "zones.conf"\n'
        "include <itl>\n"
        "include <plugins>\n"
        'include "features.conf"\n'
        'include_recursive "conf.d"\n')
    (etc / "constants.conf").write_text(
        f'const PluginDir = "{PLUGIN_DIR}"\n'
        f'const PluginContribDir = "{plugin_dir}"\n'
        "const ManubulonPluginDir = PluginDir\n"
        f'const NodeName = "{node.name}"\n'
        'const TicketSalt = ""\n')
    (etc / "zones.conf").write_text(zones)
    (etc / "features.conf").write_text(
        "object FileLogger \"main-log\" {\n"
        "  severity = \"information\"\n"
        "  path = LogDir + \"/icinga2.log\"\n"
        "}\n"
        "object ApiListener \"api\" {\n"
        f"  bind_host = \"{node.api_host}\"\n"
        f"  bind_port = {node.api_port}\n"
        f"{api_extra}"
        "}\n"
        "object ApiUser \"e2e\" {\n"
        f"  password = \"{node.password}\"\n"
        "  permissions = [ \"*\" ]\n"
        "}\n" + features)
