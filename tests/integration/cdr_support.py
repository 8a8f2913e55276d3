"""Support for the tests of `pbxctl serve` as ops run it (CDR outbox,
reconcile, restarts, reload): the service as a child process, `pbxctl`
against it, a private PostgreSQL cluster that can really be stopped, a TCP
proxy that can hold a database connection mid-flight, an AMI listener that
sees when Asterisk did things, and small database helpers.

Everything here waits by polling with a deadline, never by fixed sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from pbx_controller.sandbox.asterisk import SandboxAsterisk, free_port
from pbx_controller.store import models as m
from pbx_controller.store.db import make_engine, make_sessionmaker, upgrade_to_head
from pbx_controller.store.reconcile import AsteriskCdr, read_master_csv

PBXCTL = str(Path(sys.executable).parent / "pbxctl")
PG_BIN = Path(os.environ.get("PBX_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


async def poll(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02) -> Any:
    """Until `predicate()` is truthy (sync), within `timeout`."""
    async with asyncio.timeout(timeout):
        while not (result := predicate()):
            await asyncio.sleep(interval)
        return result


async def apoll(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Until `await predicate()` is truthy, within `timeout`."""
    async with asyncio.timeout(timeout):
        while not (result := await predicate()):
            await asyncio.sleep(interval)
        return result


# --------------------------------------------------------------------------
# Database
# --------------------------------------------------------------------------


async def seed(url: str, tenants: Sequence[tuple[str, str, str]]) -> None:
    """Migrate `url` and add (tenant id, greeting, DID) rows."""
    await upgrade_to_head(url)
    engine = make_engine(url)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            for tenant_id, greeting, did in tenants:
                session.add(m.Tenant(id=tenant_id, name=tenant_id, greeting_sound=greeting))
                await session.flush()
                session.add(m.Did(number=did, tenant_id=tenant_id))
    finally:
        await engine.dispose()


async def cdr_rows(url: str) -> list[m.Cdr]:
    engine = make_engine(url)
    try:
        async with make_sessionmaker(engine)() as session:
            return list((await session.scalars(select(m.Cdr).order_by(m.Cdr.arrived_at))).all())
    finally:
        await engine.dispose()


def master_csv(asterisk: SandboxAsterisk) -> Path:
    return asterisk.host("log/cdr-csv/Master.csv")


def asterisk_calls(asterisk: SandboxAsterisk, did: str) -> dict[str, AsteriskCdr]:
    """Asterisk's own CDRs (Master.csv) of calls to `did`, by our call id."""
    path = master_csv(asterisk)
    if not path.exists():
        return {}
    return {
        call_id: rows[0]
        for call_id, rows in read_master_csv(path).items()
        if any(r.dst == did for r in rows)
    }


def place_call(asterisk: SandboxAsterisk, did: str) -> None:
    """A caller dials `did`: a Local channel into the inbound dialplan."""
    asterisk.cli(f"channel originate Local/{did}@pbx-inbound application Wait 20")


# --------------------------------------------------------------------------
# pbxctl serve
# --------------------------------------------------------------------------


class Serve:
    """`pbxctl serve` in a child process; its log goes to a file."""

    def __init__(
        self, asterisk: SandboxAsterisk, database_url: str, data_dir: Path, log_path: Path
    ) -> None:
        self.env = {
            **os.environ,
            **asterisk.endpoints.controller_env(),
            "PBX_DATABASE__URL": database_url,
            "PBX_DATA_DIR": str(data_dir),
            "PBX_LOG_LEVEL": "INFO",
        }
        self.data_dir = data_dir
        self.database_url = database_url
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    @property
    def outbox(self) -> Path:
        return self.data_dir / "outbox"

    def log(self) -> str:
        """This run's part of the log."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[self._log_start :].decode(errors="replace")

    async def start(self, timeout: float = 30.0) -> Serve:
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                [PBXCTL, "serve"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir.parent,
                start_new_session=True,
            )
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(
                    f"pbxctl serve exited with {process.returncode}:\n{self.log()}"
                )
            return "pbx-controller ready" in self.log()

        await poll(ready, timeout)
        return self

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    async def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, as systemd would; returns the exit status."""
        assert self.process is not None
        process, self.process = self.process, None
        process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(process.wait, timeout)

    def cleanup(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


async def configured_serve(asterisk: SandboxAsterisk, tmp_path: Path, config: str) -> Serve:
    """A `pbxctl serve` (not started) on a new SQLite database holding the
    pbx.toml text `config`, with its HTTP API on a free port for `pbxctl`."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'pbx.db'}"
    await upgrade_to_head(url)
    (tmp_path / "var").mkdir()
    serve = Serve(asterisk, url, tmp_path / "var", tmp_path / "serve.log")
    serve.env["PBX_HTTP__PORT"] = str(free_port())
    apply_config(serve, tmp_path, config)
    return serve


def apply_config(serve: Serve, tmp_path: Path, config: str) -> None:
    path = tmp_path / "pbx.toml"
    path.write_text(config)
    pbxctl(serve, "config", "apply", str(path))


def pbxctl(serve: Serve, *args: str) -> str:
    """`pbxctl ARGS` against that controller and database; must succeed."""
    done = subprocess.run(
        [PBXCTL, *args], env=serve.env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def agents(serve: Serve) -> dict[str, tuple[str, str | None, list[str]]]:
    """The controller's agents: id -> (state, reason, queues served)."""
    listed: list[dict[str, Any]] = json.loads(pbxctl(serve, "agent", "list", "--format", "json"))
    return {x["agent_id"]: (x["state"], x["reason"], x["queues"]) for x in listed}


# --------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------


class PausableProxy:
    """A TCP proxy in front of a database. `pause()` holds every byte in both
    directions (a frozen server or a stalled network: a commit in flight
    neither completes nor fails); `resume()` lets them through again."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.held_bytes = 0
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> PausableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(source, sink, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, client: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await source.read(65536):
                if not self._open.is_set():
                    self.held_bytes += len(data)
                    await self._open.wait()
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()


class PrivatePostgres:
    """A throwaway PostgreSQL 15 cluster on a free port, to stop for real.

    As root, initdb and pg_ctl run as the `postgres` user in a directory it
    owns. Never touches the machine's shared server.
    """

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise FileNotFoundError(f"no PostgreSQL binaries in {PG_BIN}")
        self.root = Path(tempfile.mkdtemp(prefix="pbx-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.root, "postgres", "postgres")

    def url(self, *, password: str = "") -> str:
        secret = f":{password}" if password else ""
        return f"postgresql+asyncpg://postgres{secret}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=60)

    def init(self) -> PrivatePostgres:
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        return self

    def start(self) -> None:
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-m", mode, "stop")

    def cleanup(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------
# What Asterisk did, and when (AMI)
# --------------------------------------------------------------------------


@dataclass
class AmiLog:
    """Every AMI event with the moment this process received it (UTC)."""

    events: list[tuple[datetime, dict[str, str]]] = field(default_factory=list)

    def find(self, **fields: str) -> list[tuple[datetime, dict[str, str]]]:
        return [
            (at, ev) for at, ev in self.events if all(ev.get(k) == v for k, v in fields.items())
        ]


class AmiListener:
    """A bare AMI session that only listens: independent of the controller."""

    def __init__(self, asterisk: SandboxAsterisk) -> None:
        self.endpoints = asterisk.endpoints
        self.log = AmiLog()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AmiListener:
        e = self.endpoints
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", e.ami_port)
        await self._reader.readline()  # banner
        action_id = uuid.uuid4().hex
        self._writer.write(
            (
                f"Action: Login\r\nActionID: {action_id}\r\nUsername: {e.ami_username}\r\n"
                f"Secret: {e.ami_password}\r\nEvents: on\r\n\r\n"
            ).encode()
        )
        self._task = asyncio.get_running_loop().create_task(self._read())
        await poll(lambda: self.log.find(ActionID=action_id), timeout=10)
        (_, response), *_ = self.log.find(ActionID=action_id)
        assert response.get("Response") == "Success", response
        return self

    async def _read(self) -> None:
        assert self._reader is not None
        message: dict[str, str] = {}
        while line := await self._reader.readline():
            text = line.decode(errors="replace").rstrip("\r\n")
            if text:
                key, _, value = text.partition(":")
                message[key.strip()] = value.strip()
            elif message:
                self.log.events.append((datetime.now(UTC), message))
                message = {}

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()

    def channel_of(self, call_id: str) -> str:
        """The channel whose dialplan set PBX_CALL_ID to `call_id`."""
        found = self.log.find(Event="VarSet", Variable="PBX_CALL_ID", Value=call_id)
        assert found, f"no VarSet for {call_id}"
        return found[0][1]["Uniqueid"]

    def when(self, uniqueid: str, **fields: str) -> datetime:
        found = self.log.find(Uniqueid=uniqueid, **fields)
        assert found, f"no AMI event {fields} for {uniqueid}"
        return found[0][0]


def utcnow() -> datetime:
    return datetime.now(UTC)
