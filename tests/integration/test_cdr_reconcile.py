"""`pbxctl cdr reconcile` against a real Asterisk's Master.csv, and the
matching rules of pbx_controller.store.reconcile on both databases."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete

from pbx_controller.core.cdr import CdrRecord, Disposition, HangupSide
from pbx_controller.sandbox.asterisk import SandboxAsterisk
from pbx_controller.store import models as m
from pbx_controller.store.cdr_writer import DatabaseCdrSink
from pbx_controller.store.db import make_engine, make_sessionmaker
from pbx_controller.store.outbox import encode_cdr, frame, segment_name
from pbx_controller.store.reconcile import reconcile
from tests.integration.cdr_support import (
    PBXCTL,
    Serve,
    apoll,
    asterisk_calls,
    cdr_rows,
    master_csv,
    place_call,
    poll,
    seed,
)


async def pbxctl(database_url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PBX_DATABASE__URL": database_url, "PBX_DATA_DIR": str(data_dir)}
    return await asyncio.to_thread(
        subprocess.run, [PBXCTL, *args], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.asterisk
async def test_reconcile_finds_a_deleted_cdr_and_one_asterisk_never_saw(
    fresh_asterisk: SandboxAsterisk, database_url: str, tmp_path: Path
) -> None:
    # A private Asterisk: its Master.csv holds this test's calls only.
    asterisk, did = fresh_asterisk, "48221001"
    data_dir = tmp_path / "var"
    serve = Serve(asterisk, database_url, data_dir, tmp_path / "serve.log")
    try:
        async with asyncio.timeout(60):
            await seed(database_url, [("recon", "sound:beep", did)])
            await serve.start()
            for number in (did, did, did, "48229999"):  # the last: nobody owns it
                await asyncio.to_thread(place_call, asterisk, number)
            rows = await apoll(lambda: _exactly(database_url, 4))
            # The unknown DID's caller would hear the whole ss-noservice
            # message before Asterisk writes its CDR; hang everyone up now
            # (a private Asterisk: nobody else's calls).
            await asyncio.to_thread(asterisk.cli, "channel request hangup all")
            await poll(lambda: len(_all_calls(asterisk)) == 4)
            assert await serve.terminate() == 0
    finally:
        serve.cleanup()
    assert {str(r.call_id) for r in rows} == set(_all_calls(asterisk))
    assert {r.disposition for r in rows} == {"served", "unknown_did"}
    day = rows[0].arrived_at.date().isoformat()
    csv = str(master_csv(asterisk))

    async with asyncio.timeout(60):
        clean = await pbxctl(
            database_url, data_dir, "cdr", "reconcile", "--date", day, "--csv", csv
        )
        assert clean.returncode == 0, clean.stdout + clean.stderr
        assert "4 calls with a call id" in clean.stdout
        assert clean.stdout.rstrip().endswith("consistent")

        lost = rows[1]
        stranger = _cdr(str(uuid.uuid4()), rows[0].arrived_at + timedelta(seconds=1))
        engine = make_engine(database_url)
        try:
            async with make_sessionmaker(engine)() as session, session.begin():
                await session.execute(delete(m.Cdr).where(m.Cdr.call_id == lost.call_id))
            await DatabaseCdrSink(make_sessionmaker(engine)).write(stranger)
        finally:
            await engine.dispose()

        text = await pbxctl(database_url, data_dir, "cdr", "reconcile", "--date", day, "--csv", csv)
        assert text.returncode == 1, text.stdout + text.stderr
        assert "Asterisk saw, no CDR in our table: 1" in text.stdout
        assert f"  {lost.call_id}  start " in text.stdout
        assert "CDR in our table, unknown to Asterisk: 1" in text.stdout
        assert f"  {stranger.call_id}  arrived " in text.stdout

        as_json = await pbxctl(
            database_url, data_dir, "cdr", "reconcile", "--date", day, "--csv", csv,
            "--format", "json",
        )  # fmt: skip
        assert as_json.returncode == 1
        report = json.loads(as_json.stdout)
        assert [r["call_id"] for r in report["missing_in_ours"]] == [str(lost.call_id)]
        assert report["missing_in_ours"][0]["dst"] == did
        assert [c["call_id"] for c in report["missing_in_asterisk"]] == [stranger.call_id]


async def _exactly(url: str, count: int) -> list[m.Cdr] | None:
    rows = await cdr_rows(url)
    assert len(rows) <= count
    return rows if len(rows) == count else None


def _all_calls(asterisk: SandboxAsterisk) -> set[str]:
    return set(asterisk_calls(asterisk, "48221001")) | set(asterisk_calls(asterisk, "s"))


# --------------------------------------------------------------------------
# Matching rules, on both databases (no Asterisk needed)
# --------------------------------------------------------------------------

DAY = date(2025, 3, 30)


def _cdr(call_id: str, arrived: datetime) -> CdrRecord:
    return CdrRecord(
        call_id=call_id,
        tenant_id=None,
        direction="inbound",
        did="48229999",
        caller="485001",
        arrived_at=arrived,
        answered_at=None,
        ended_at=arrived + timedelta(seconds=2),
        disposition=Disposition.UNKNOWN_DID,
        hangup_side=HangupSide.SYSTEM,
    )


def _csv_row(call_id: str, start: str, end: str, channel: str = "Local/1@pbx-inbound-1;2") -> str:
    return (
        f'"","485001","48229999","pbx-inbound","""x"" <485001>","{channel}","","Stasis",'
        f'"pbx-controller,inbound","{start}","{start}","{end}",2,2,"ANSWERED","DOCUMENTATION",'
        f'"run-1.{uuid.uuid4().int % 1000}","{call_id}"\n'
    )


async def test_reconcile_rules(database_url: str, tmp_path: Path) -> None:
    ids = [str(uuid.uuid4()) for _ in range(6)]
    matched, late, missing, waiting, only_ours, other_day = ids
    midnight = datetime(2025, 3, 31, tzinfo=UTC)
    csv = tmp_path / "Master.csv"
    csv.write_text(
        # Not ours: no UUID in the userfield (the ;1 half, another dialplan).
        _csv_row("", "2025-03-30 10:00:00", "2025-03-30 10:00:02").replace(';2"', ';1"')
        + _csv_row("not-a-call-id", "2025-03-30 10:00:00", "2025-03-30 10:00:02")
        + _csv_row(matched, "2025-03-30 10:00:00", "2025-03-30 10:00:02")
        # Two legs of one call count once.
        + _csv_row(matched, "2025-03-30 10:00:01", "2025-03-30 10:00:02", "PJSIP/agent-1")
        # Started 23:59:59 in Asterisk's whole seconds, arrived 00:00:00.004 here.
        + _csv_row(late, "2025-03-30 23:59:59", "2025-03-31 00:00:02")
        + _csv_row(missing, "2025-03-30 12:00:00", "2025-03-30 12:00:05")
        + _csv_row(waiting, "2025-03-30 13:00:00", "2025-03-30 13:00:05")
        + _csv_row(other_day, "2025-03-29 13:00:00", "2025-03-29 13:00:05")
    )
    outbox = tmp_path / "var" / "outbox"
    outbox.mkdir(parents=True)
    arrived = datetime(2025, 3, 30, 13, 0, 0, 5000, tzinfo=UTC)
    (outbox / segment_name(1)).write_bytes(frame(encode_cdr(_cdr(waiting, arrived))))

    await seed(database_url, [])
    engine = make_engine(database_url)
    try:
        sink = DatabaseCdrSink(make_sessionmaker(engine))
        await sink.write_many(
            [
                _cdr(matched, datetime(2025, 3, 30, 10, 0, 0, 3000, tzinfo=UTC)),
                _cdr(late, midnight + timedelta(milliseconds=4)),
                _cdr(only_ours, datetime(2025, 3, 30, 0, 0, tzinfo=UTC)),  # first instant
                _cdr(str(uuid.uuid4()), midnight),  # next day: not asked for
                _cdr(other_day, datetime(2025, 3, 29, 13, 0, 0, 5000, tzinfo=UTC)),
            ]
        )
        async with asyncio.timeout(30):
            report = await reconcile(make_sessionmaker(engine), csv, DAY, outbox_dir=outbox)
    finally:
        await engine.dispose()
    assert set(report.asterisk) == {matched, late, missing, waiting}
    assert set(report.ours) == {matched, only_ours}
    assert [r.call_id for r in report.missing_in_ours] == [missing]
    assert [r.call_id for r in report.waiting_in_outbox] == [waiting]
    assert [c.call_id for c in report.missing_in_asterisk] == [only_ours]
    assert report.differences == 3
    assert not report.consistent
