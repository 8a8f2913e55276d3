"""CDRs that are never lost or doubled, against the real Asterisk and real
databases, with `pbxctl serve` as a real child process:

- kill -9 while CDRs sit in the outbox and the database commit hangs, then
  a restart: one row per call; a replay of already committed CDRs (the
  cursor from before the commit) changes nothing;
- a private PostgreSQL stopped for real: the service keeps taking calls,
  CDRs wait in the outbox and drain in order once it is back;
- the CDR's instants match what Asterisk did, seen independently over AMI;
- start-up with the database unreachable fails with one clean line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from pbx_controller.cli.serve import SHUTDOWN_FLUSH_S
from pbx_controller.core.cdr import Disposition, HangupSide
from pbx_controller.sandbox.asterisk import SandboxAsterisk, free_port
from pbx_controller.store.outbox import cdr_to_dict, scan_outbox
from tests.fixtures.asterisk import unavailable
from tests.integration.cdr_support import (
    PBXCTL,
    AmiListener,
    PausableProxy,
    PrivatePostgres,
    Serve,
    apoll,
    asterisk_calls,
    cdr_rows,
    place_call,
    poll,
    seed,
    utcnow,
)

pytestmark = pytest.mark.asterisk

# The dialplan answers, plays this greeting, and the controller hangs up.
SHORT = "sound:beep"
LONG = "sound:silence/3"
TOLERANCE = timedelta(milliseconds=200)


def ms(delta: timedelta) -> float:
    return round(delta.total_seconds() * 1000, 1)


def new_did() -> str:
    """A DID no other test uses (they share the session's Asterisk)."""
    return "77" + str(uuid.uuid4().int)[:8]


@pytest.fixture
def serves(asterisk: SandboxAsterisk, tmp_path: Path) -> Iterator[list[Serve]]:
    """Every `pbxctl serve` a test starts is killed at the end, whatever happens."""
    started: list[Serve] = []
    yield started
    for serve in started:
        serve.cleanup()


def make_serve(serves: list[Serve], asterisk: SandboxAsterisk, url: str, tmp_path: Path) -> Serve:
    serve = Serve(asterisk, url, tmp_path / "var", tmp_path / "serve.log")
    serves.append(serve)
    return serve


def row_dicts(rows: list) -> dict[str, dict[str, object]]:
    return {
        str(r.call_id): {
            "arrived_at": r.arrived_at,
            "ended_at": r.ended_at,
            "disposition": r.disposition,
            "created_at": r.created_at,
        }
        for r in rows
    }


# --------------------------------------------------------------------------
# kill -9 between the outbox append and the database commit
# --------------------------------------------------------------------------


class Blocker:
    """Makes the database commit hang, for real, on either dialect."""

    url: str

    async def block(self) -> None: ...
    async def unblock(self) -> None: ...
    async def count_rows(self) -> int: ...


class PostgresBlocker(Blocker):
    """The shared server behind a proxy that holds every byte."""

    def __init__(self, direct_url: str, proxy: PausableProxy) -> None:
        self.direct_url = direct_url
        self.proxy = proxy

        self.url = make_url(direct_url).set(port=proxy.port).render_as_string(False)

    async def block(self) -> None:
        self.proxy.pause()

    async def unblock(self) -> None:
        self.proxy.resume()

    async def count_rows(self) -> int:
        dsn = make_url(self.direct_url).set(drivername="postgresql").render_as_string(False)
        connection = await asyncpg.connect(dsn, timeout=10)
        try:
            return int(await connection.fetchval("SELECT count(*) FROM cdr"))
        finally:
            await connection.close()


class SqliteBlocker(Blocker):
    """Another connection holds the write lock: the controller's INSERT waits
    on the busy timeout, fails with 'database is locked', and retries."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = make_url(url).database or ""
        self.connection: sqlite3.Connection | None = None

    async def block(self) -> None:
        self.connection = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        self.connection.execute("BEGIN EXCLUSIVE")

    async def unblock(self) -> None:
        if self.connection is not None:
            self.connection.execute("ROLLBACK")
            self.connection.close()
            self.connection = None

    async def count_rows(self) -> int:
        connection = sqlite3.connect(self.path, timeout=10)
        try:
            return int(connection.execute("SELECT count(*) FROM cdr").fetchone()[0])
        finally:
            connection.close()


@contextlib.asynccontextmanager
async def open_blocker(database_url: str) -> AsyncIterator[Blocker]:
    if make_url(database_url).get_backend_name() == "sqlite":
        sqlite_blocker = SqliteBlocker(database_url)
        try:
            yield sqlite_blocker
        finally:
            await sqlite_blocker.unblock()
        return
    proxy = await PausableProxy(make_url(database_url).port or 5432).start()
    try:
        yield PostgresBlocker(database_url, proxy)
    finally:
        proxy.resume()
        await proxy.close()


async def test_kill9_between_append_and_commit_loses_nothing_and_doubles_nothing(
    asterisk: SandboxAsterisk, database_url: str, serves: list[Serve], tmp_path: Path
) -> None:
    did = new_did()
    async with asyncio.timeout(80), open_blocker(database_url) as blocker:
        url = blocker.url
        await seed(url, [("killco", SHORT, did)])
        first = await make_serve(serves, asterisk, url, tmp_path).start()

        # The database stops answering; callers keep calling.
        await blocker.block()
        for _ in range(3):
            await asyncio.to_thread(place_call, asterisk, did)
        pending = await poll(
            lambda: (
                len(scan_outbox(first.outbox).pending) == 3 and scan_outbox(first.outbox).pending
            )
        )
        in_outbox = [c.call_id for c in pending]
        # Asterisk saw exactly these calls; none is in the table yet.
        seen = await poll(
            lambda: len(asterisk_calls(asterisk, did)) == 3 and asterisk_calls(asterisk, did)
        )
        assert set(seen) == set(in_outbox)
        assert all(r.lastapp == "Stasis" for r in seen.values())
        assert await blocker.count_rows() == 0
        if isinstance(blocker, PostgresBlocker):
            # The controller's database round trip is in flight, held.
            await poll(lambda: blocker.proxy.held_bytes > 0)

        first.kill9()
        assert len(scan_outbox(first.outbox).pending) == 3
        before_restart = _snapshot(first.outbox)
        await blocker.unblock()

        second = await make_serve(serves, asterisk, url, tmp_path).start()
        assert "3 CDR(s) from an earlier run wait" in second.log()
        rows = await apoll(lambda: _rows_when(url, 3))
        assert sorted(str(r.call_id) for r in rows) == sorted(in_outbox)
        for row, cdr in zip(
            sorted(rows, key=lambda r: str(r.call_id)),
            sorted(pending, key=lambda c: c.call_id),
            strict=True,
        ):
            assert cdr_to_dict(cdr)["arrived_at"] == row.arrived_at.isoformat(
                timespec="milliseconds"
            )
            assert row.disposition == Disposition.SERVED.value
        await poll(lambda: not scan_outbox(second.outbox).pending)
        committed = row_dicts(rows)

        # The replay case: the commit happened, the "sent" mark did not.
        second.kill9()
        _restore(second.outbox, before_restart)
        assert len(scan_outbox(second.outbox).pending) == 3
        third = await make_serve(serves, asterisk, url, tmp_path).start()
        assert "3 CDR(s) from an earlier run wait" in third.log()
        await poll(lambda: not scan_outbox(third.outbox).pending)
        assert row_dicts(await cdr_rows(url)) == committed  # same rows, not rewritten
        assert await third.terminate() == 0
        assert "everything delivered" in third.log()
        assert "rejected" not in third.log()
        assert list(third.outbox.glob("seg-*.log")) == []


async def _rows_when(url: str, count: int) -> list | None:
    rows = await cdr_rows(url)
    assert len(rows) <= count, f"{len(rows)} rows for {count} calls"
    return rows if len(rows) == count else None


def _snapshot(outbox: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in outbox.iterdir() if p.name != "lock"}


def _restore(outbox: Path, files: dict[str, bytes]) -> None:
    for path in outbox.iterdir():
        if path.name != "lock":
            path.unlink()
    for name, data in files.items():
        (outbox / name).write_bytes(data)


# --------------------------------------------------------------------------
# PostgreSQL stopped for real
# --------------------------------------------------------------------------


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    try:
        cluster = PrivatePostgres().init()
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        unavailable(f"cannot run a private PostgreSQL: {exc}")
        raise
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.mark.postgres
async def test_stopped_postgres_keeps_cdrs_in_the_outbox_and_drains_them_in_order(
    asterisk: SandboxAsterisk, private_pg: PrivatePostgres, serves: list[Serve], tmp_path: Path
) -> None:
    did = new_did()
    # Trust auth ignores the password; it is there to prove it is never logged.
    url = private_pg.url(password="s3cret-never-logged")
    async with asyncio.timeout(85):
        await seed(url, [("downco", SHORT, did)])
        serve = await make_serve(serves, asterisk, url, tmp_path).start()

        await asyncio.to_thread(private_pg.stop)
        # Calls one after the other, so their order is known; each is
        # answered and served by the controller while the database is down.
        for n in range(1, 5):
            await asyncio.to_thread(place_call, asterisk, did)
            await poll(lambda n=n: len(scan_outbox(serve.outbox).pending) == n)
        waiting = scan_outbox(serve.outbox).pending
        assert [c.arrived_at for c in waiting] == sorted(c.arrived_at for c in waiting)
        assert all(c.disposition is Disposition.SERVED for c in waiting)
        await poll(lambda: "cannot write to postgresql+asyncpg://postgres:***@" in serve.log())

        await asyncio.to_thread(private_pg.start)
        rows = await apoll(lambda: _rows_when(url, 4), timeout=20)
        await poll(lambda: not scan_outbox(serve.outbox).pending)
        assert {str(r.call_id) for r in rows} == {c.call_id for c in waiting}
        # Delivered in the order they were appended: on a fresh heap that
        # only ever saw inserts, physical order is insertion order.
        dsn = make_url(url).set(drivername="postgresql").render_as_string(False)
        connection = await asyncpg.connect(dsn, timeout=10)
        try:
            inserted = await connection.fetch("SELECT call_id FROM cdr ORDER BY ctid")
        finally:
            await connection.close()
        assert [str(r["call_id"]) for r in inserted] == [c.call_id for c in waiting]
        assert "is back after" in serve.log()

        # SIGTERM while the database is down: the flush gives up after a few
        # seconds, exits cleanly, and the CDR waits on disk for the next start.
        await asyncio.to_thread(private_pg.stop)
        await asyncio.to_thread(place_call, asterisk, did)
        (last,) = await poll(lambda: scan_outbox(serve.outbox).pending)
        started = asyncio.get_running_loop().time()
        assert await serve.terminate() == 0
        took = asyncio.get_running_loop().time() - started
        assert took < SHUTDOWN_FLUSH_S + 3, took
        assert "1 CDR(s) not yet in postgresql+asyncpg://postgres:***@" in serve.log()
        assert [c.call_id for c in scan_outbox(serve.outbox).pending] == [last.call_id]
        logs = serve.log()

        await asyncio.to_thread(private_pg.start)
        again = await make_serve(serves, asterisk, url, tmp_path).start()
        await apoll(lambda: _rows_when(url, 5))
        await poll(lambda: not scan_outbox(again.outbox).pending)
        assert await again.terminate() == 0
        logs += again.log()
    assert "s3cret-never-logged" not in logs
    assert "Traceback" not in logs


# --------------------------------------------------------------------------
# Timestamps
# --------------------------------------------------------------------------


async def test_cdr_instants_match_what_asterisk_did(
    asterisk: SandboxAsterisk, database_url: str, serves: list[Serve], tmp_path: Path
) -> None:
    served_did, abandoned_did = new_did(), new_did()
    async with asyncio.timeout(60):
        await seed(database_url, [("quick", SHORT, served_did), ("slow", LONG, abandoned_did)])
        serve = await make_serve(serves, asterisk, database_url, tmp_path).start()
        async with AmiListener(asterisk) as ami:
            # 1. Served: the controller answers, greets and hangs up.
            before = utcnow()
            await asyncio.to_thread(place_call, asterisk, served_did)
            (served,) = await apoll(lambda: _rows_when(database_url, 1))
            channel = ami.channel_of(str(served.call_id))
            entered = ami.when(channel, Event="Newexten", Application="Stasis")
            hung_up = await poll(lambda: ami.log.find(Uniqueid=channel, Event="Hangup"))
            assert before <= served.arrived_at
            print(
                f"served: arrived_at - Stasis entry {ms(served.arrived_at - entered)} ms,"
                f" ended_at - Hangup {ms(served.ended_at - hung_up[0][0])} ms"
            )
            assert abs(served.arrived_at - entered) <= TOLERANCE, (served.arrived_at, entered)
            assert abs(served.ended_at - hung_up[0][0]) <= TOLERANCE, (served.ended_at, hung_up)
            assert served.disposition == "served"
            assert served.hangup_side == "system"

            # 2. Abandoned: the caller hangs up at a moment the test chooses.
            await asyncio.to_thread(place_call, asterisk, abandoned_did)
            answered = await poll(
                lambda: [
                    ev["Channel"]
                    for _, ev in ami.log.find(Event="Newstate", ChannelStateDesc="Up")
                    if ev["Channel"].startswith(f"Local/{abandoned_did}@")
                    and ev["Channel"].endswith(";2")
                ]
            )
            caller = answered[0][:-1] + "1"  # the caller's end of the Local pair
            hang_from = utcnow()
            await asyncio.to_thread(asterisk.cli, f"channel request hangup {caller}")
            hang_to = utcnow()
            rows = await apoll(lambda: _rows_when(database_url, 2))
            (abandoned,) = [r for r in rows if r.did == abandoned_did]
            print(
                f"abandoned: hang-up request took {ms(hang_to - hang_from)} ms,"
                f" ended_at {ms(abandoned.ended_at - hang_from)} ms after it began"
            )
            assert hang_from - TOLERANCE <= abandoned.ended_at <= hang_to + TOLERANCE
            assert abandoned.disposition == "abandoned"
            assert abandoned.hangup_side == HangupSide.CALLER.value
            channel = ami.channel_of(str(abandoned.call_id))
            entered = ami.when(channel, Event="Newexten", Application="Stasis")
            assert abs(abandoned.arrived_at - entered) <= TOLERANCE

        # Asterisk's own CDRs agree, to their whole seconds.
        for row, did in ((served, served_did), (abandoned, abandoned_did)):
            theirs = (await poll(lambda did=did: asterisk_calls(asterisk, did)))[str(row.call_id)]
            assert theirs.start <= row.arrived_at < theirs.start + timedelta(seconds=1) + TOLERANCE
            assert theirs.end is not None
            assert (
                theirs.end - TOLERANCE
                <= row.ended_at
                < theirs.end + timedelta(seconds=1) + TOLERANCE
            )
        assert await serve.terminate() == 0


# --------------------------------------------------------------------------
# Start-up without a database
# --------------------------------------------------------------------------


async def test_serve_without_its_database_fails_with_one_clean_line(
    asterisk: SandboxAsterisk, tmp_path: Path
) -> None:
    closed = f"postgresql+asyncpg://pbx:s3cret-pw@127.0.0.1:{_closed_port()}/pbx"
    env = {
        **os.environ,
        **asterisk.endpoints.controller_env(),
        "PBX_DATABASE__URL": closed,
        "PBX_DATA_DIR": str(tmp_path / "var"),
    }
    async with asyncio.timeout(30):
        result = await asyncio.to_thread(
            subprocess.run, [PBXCTL, "serve"], env=env, capture_output=True, timeout=30
        )
    stderr = result.stderr.decode()
    assert result.returncode == 2
    assert stderr.splitlines()[-1].startswith(
        "pbxctl: error: database postgresql+asyncpg://pbx:***@127.0.0.1:"
    )
    assert "unreachable" in stderr.splitlines()[-1]
    assert "Traceback" not in stderr
    assert "s3cret-pw" not in stderr + result.stdout.decode()
    assert not (tmp_path / "var" / "outbox").exists()  # failed before taking calls


def _closed_port() -> int:
    return free_port()  # bound and released: nothing listens there
