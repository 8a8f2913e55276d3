"""Run a throwaway Asterisk 22 with the project's configuration.

Used by the tests, `make demo` and `make bench`. It finds an Asterisk (a
system one on PATH, else the sandbox root that `make asterisk` builds),
renders asterisk_conf/ and dialplan/ with free loopback ports and fresh
credentials into a private run directory, starts Asterisk in the
foreground, waits until ARI answers, and stops it again.

Synchronous on purpose: it is driven from pytest session fixtures and
scripts, before and after any event loop.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from pbx_controller.asterisk.conf import render_all
from pbx_controller.config import Settings

DEFAULT_SANDBOX = Path("/var/cache/pbx-controller/asterisk-sid")
READY_MARKER = ".pbx-ready"


class AsteriskUnavailable(RuntimeError):
    """No Asterisk to run: neither on PATH nor a built sandbox."""


@dataclass(frozen=True)
class AsteriskInstall:
    """Where an Asterisk lives. `root` is `/` for a system install, else the
    chroot; paths inside Asterisk's config are relative to it."""

    root: Path
    chroot: bool

    def command(self, *args: str) -> list[str]:
        prefix = ["chroot", str(self.root)] if self.chroot else []
        return [*prefix, "asterisk", *args]

    def host_path(self, inner: str) -> Path:
        return self.root / inner.lstrip("/") if self.chroot else Path(inner)

    def module_dir(self) -> str:
        for candidate in (
            "/usr/lib/x86_64-linux-gnu/asterisk/modules",
            "/usr/lib/aarch64-linux-gnu/asterisk/modules",
            "/usr/lib/asterisk/modules",
            "/usr/lib64/asterisk/modules",
        ):
            if (self.host_path(candidate) / "app_stasis.so").exists():
                return candidate
        raise AsteriskUnavailable(
            f"no Asterisk module directory with app_stasis.so under {self.root}"
        )

    def data_dir(self) -> str:
        for candidate in ("/usr/share/asterisk", "/var/lib/asterisk"):
            if (self.host_path(candidate) / "sounds").exists():
                return candidate
        raise AsteriskUnavailable(f"no Asterisk sounds directory under {self.root}")


def find_asterisk() -> AsteriskInstall:
    """The system Asterisk if one is on PATH, else the sandbox root."""
    if not os.environ.get("PBX_FORCE_SANDBOX") and shutil.which("asterisk"):
        return AsteriskInstall(root=Path("/"), chroot=False)
    root = Path(os.environ.get("PBX_ASTERISK_SANDBOX", DEFAULT_SANDBOX))
    if (root / READY_MARKER).exists():
        if os.geteuid() != 0:
            raise AsteriskUnavailable(f"the sandbox Asterisk at {root} needs root (chroot)")
        return AsteriskInstall(root=root, chroot=True)
    raise AsteriskUnavailable(
        f"no Asterisk: none on PATH and no sandbox at {root}. Run `make asterisk`."
    )


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class SandboxEndpoints:
    """How the controller and tests reach this Asterisk. The secrets are
    generated per run and never written anywhere but the run directory."""

    http_port: int
    ami_port: int
    sip_port: int
    agi_port: int
    pstn_port: int
    ari_app: str
    ari_username: str
    ari_password: str = field(repr=False)
    ami_username: str = "pbx"
    ami_password: str = field(default="", repr=False)

    @property
    def ari_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/ari"

    def controller_env(self) -> dict[str, str]:
        """Settings for a controller process (see pbx_controller.config)."""
        return {
            "PBX_ARI__URL": self.ari_url,
            "PBX_ARI__USERNAME": self.ari_username,
            "PBX_ARI__PASSWORD": self.ari_password,
            "PBX_ARI__APP": self.ari_app,
            "PBX_AMI__HOST": "127.0.0.1",
            "PBX_AMI__PORT": str(self.ami_port),
            "PBX_AMI__USERNAME": self.ami_username,
            "PBX_AMI__PASSWORD": self.ami_password,
            "PBX_AGI__HOST": "127.0.0.1",
            "PBX_AGI__PORT": str(self.agi_port),
            "PBX_HTTP__PORT": "0",
        }


class SandboxAsterisk:
    """One running Asterisk with a private run directory."""

    def __init__(
        self,
        install: AsteriskInstall | None = None,
        *,
        ari_app: str = "pbx-controller",
        agi_port: int | None = None,
    ) -> None:
        self.install = install or find_asterisk()
        rtp_start = 20000 + secrets.randbelow(20000) // 2 * 2
        self.endpoints = SandboxEndpoints(
            http_port=free_port(),
            ami_port=free_port(),
            sip_port=free_port(socket.SOCK_DGRAM),
            agi_port=agi_port or free_port(),
            pstn_port=free_port(socket.SOCK_DGRAM),
            ari_app=ari_app,
            ari_username="pbx",
            ari_password=secrets.token_urlsafe(18),
            ami_username="pbx",
            ami_password=secrets.token_urlsafe(18),
        )
        self._rtp = (rtp_start, rtp_start + 2000)
        base = self.install.host_path("/var/lib/pbx-sandbox")
        base.mkdir(parents=True, exist_ok=True)
        self.host_dir = Path(tempfile.mkdtemp(prefix="run-", dir=base))
        self.inner_dir = (
            "/" + str(self.host_dir.relative_to(self.install.root))
            if self.install.chroot
            else str(self.host_dir)
        )
        self.process: subprocess.Popen[bytes] | None = None

    # paths ---------------------------------------------------------------
    def inner(self, sub: str) -> str:
        return f"{self.inner_dir}/{sub}"

    def host(self, sub: str) -> Path:
        return self.host_dir / sub

    @property
    def log_path(self) -> Path:
        return self.host("log/messages.log")

    @property
    def recording_dir(self) -> Path:
        """Where ARI `recordings/stored` files land, on the host."""
        return self.host("spool/recording")

    # lifecycle -----------------------------------------------------------
    def render(self) -> None:
        e = self.endpoints
        values = {
            "etc_dir": self.inner("etc"),
            "module_dir": self.install.module_dir(),
            "data_dir": self.install.data_dir(),
            "varlib_dir": self.inner("lib"),
            "spool_dir": self.inner("spool"),
            "run_dir": self.inner("run"),
            "log_dir": self.inner("log"),
            "cache_dir": self.inner("cache"),
            "system_name": self.host_dir.name,
            "http_port": str(e.http_port),
            "ami_port": str(e.ami_port),
            "sip_port": str(e.sip_port),
            "agi_port": str(e.agi_port),
            "pstn_port": str(e.pstn_port),
            "rtp_start": str(self._rtp[0]),
            "rtp_end": str(self._rtp[1]),
            "ari_app": e.ari_app,
            "ari_username": e.ari_username,
            "ari_password": e.ari_password,
            "ami_username": e.ami_username,
            "ami_password": e.ami_password,
        }
        for sub in ("lib", "spool/recording", "spool/tmp", "run", "log/cdr-csv", "cache"):
            self.host(sub).mkdir(parents=True, exist_ok=True)
        render_all(values, self.host("etc"))

    def start(self, timeout: float = 30.0) -> SandboxAsterisk:
        self.render()
        conf = self.inner("etc/asterisk.conf")
        out = open(self.host("log/console.log"), "wb")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            self.install.command("-f", "-n", "-C", conf),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        try:
            self._wait_for_ari(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_ari(self, timeout: float) -> None:
        e = self.endpoints
        token = base64.b64encode(f"{e.ari_username}:{e.ari_password}".encode()).decode()
        request = urllib.request.Request(  # noqa: S310 - a loopback http URL we built
            f"{e.ari_url}/asterisk/info", headers={"Authorization": f"Basic {token}"}
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AsteriskUnavailable(
                    f"Asterisk exited with {self.process.returncode} during start; "
                    f"see {self.host('log/console.log')}"
                )
            try:
                with urllib.request.urlopen(request, timeout=1) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise AsteriskUnavailable(f"ARI did not answer within {timeout:.0f}s on {e.ari_url}")

    def set_agent_phones(self, phones: dict[str, str]) -> None:
        """Define PJSIP endpoints for agent phones ({endpoint: "host:port"})
        and reload PJSIP. Test phones are on loopback and need no auth."""
        sections = []
        for endpoint, address in sorted(phones.items()):
            sections.append(
                f"[{endpoint}]\ntype = endpoint\ncontext = pbx-agents\ndisallow = all\n"
                f"allow = ulaw,alaw,gsm\ndirect_media = no\nrtp_symmetric = yes\n"
                f"dtmf_mode = rfc4733\naors = {endpoint}\n\n"
                f"[{endpoint}]\ntype = aor\ncontact = sip:{endpoint}@{address}\n"
            )
        path = self.host("etc/pjsip_agents.conf")
        path.write_text("\n".join(sections))
        self.cli("module reload res_pjsip.so")

    def cli(self, command: str, timeout: float = 10.0) -> str:
        """Run one Asterisk CLI command over the control socket."""
        result = subprocess.run(
            self.install.command("-C", self.inner("etc/asterisk.conf"), "-rx", command),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"asterisk -rx {command!r} failed: {result.stderr.decode(errors='replace')}"
            )
        return result.stdout.decode(errors="replace")

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.cli("core stop now", timeout=5)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self.process = None

    def restart(self, timeout: float = 30.0, *, crash: bool = False) -> None:
        """Stop (or, with `crash`, SIGKILL) and start again on the same ports
        and credentials."""
        if crash and self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None
        self.stop()
        self.start(timeout)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.host_dir, ignore_errors=True)

    def __enter__(self) -> SandboxAsterisk:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def controller_settings(sandbox: SandboxAsterisk, **overrides: object) -> Settings:
    """Settings that point a controller at this sandbox."""
    from pydantic import SecretStr

    e = sandbox.endpoints
    values: dict[str, object] = {
        "ari": {
            "url": e.ari_url,
            "username": e.ari_username,
            "password": SecretStr(e.ari_password),
            "app": e.ari_app,
            "reconnect_max_s": 1.0,
        },
        "ami": {
            "host": "127.0.0.1",
            "port": e.ami_port,
            "username": e.ami_username,
            "password": SecretStr(e.ami_password),
        },
        "agi": {"host": "127.0.0.1", "port": e.agi_port},
        # Any free port: tests and the demo must not collide on 8780.
        "http": {"host": "127.0.0.1", "port": 0},
        # Asterisk writes the legs here; the controller merges them.
        "recordings": {"spool_dir": sandbox.recording_dir},
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]
