"""The recording pipeline against a PostgreSQL that refuses connections for a
while (ALLOW_CONNECTIONS false, backends terminated: a real outage, not a
fake): the files are stored at once, the rows wait, and arrive once the
database is back."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import struct
import uuid
import wave
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from pbx_controller.core.consent import (
    ConsentEvidence,
    ConsentPolicy,
    ConsentState,
    RecordingRules,
)
from pbx_controller.core.recording import RecordedLeg, RecordingJob
from pbx_controller.recordings.pipeline import RecordingPipeline
from pbx_controller.recordings.storage import RecordingStorage
from pbx_controller.store import models as m
from pbx_controller.store.db import make_engine, make_sessionmaker, upgrade_to_head
from pbx_controller.store.recordings import recording_id_for

pytestmark = pytest.mark.postgres


def write_leg(path: Path, hz: int, seconds: float) -> None:
    with wave.open(str(path), "wb") as leg:
        leg.setnchannels(1)
        leg.setsampwidth(2)
        leg.setframerate(8000)
        leg.writeframes(
            b"".join(
                struct.pack("<h", int(8000 * math.sin(2 * math.pi * hz * n / 8000)))
                for n in range(int(seconds * 8000))
            )
        )


async def set_connections(url: str, allowed: bool) -> None:
    name = make_url(url).database
    admin = await asyncpg.connect(
        make_url(url)
        .set(drivername="postgresql", database="postgres")
        .render_as_string(hide_password=False)
    )
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                name,
            )
    finally:
        await admin.close()


async def test_rows_wait_for_a_database_that_is_down(pg_database_url: str, tmp_path: Path) -> None:
    await upgrade_to_head(pg_database_url)
    engine = make_engine(pg_database_url)
    sessions = make_sessionmaker(engine)
    try:
        async with sessions() as session, session.begin():
            session.add(m.Tenant(id="acme", name="Acme"))
        call_id = str(uuid.uuid4())
        spool = tmp_path / "spool"
        spool.mkdir()
        legs = tuple(
            RecordedLeg(role, f"chan-{role}", f"{call_id}-snoop-{role}", f"{call_id}-{role}")
            for role in ("caller", "agent")
        )
        write_leg(spool / f"{call_id}-caller.wav", 440, 2.0)
        write_leg(spool / f"{call_id}-agent.wav", 1200, 2.0)
        started = dt.datetime.now(dt.UTC)
        job = RecordingJob(
            call_id=call_id,
            tenant_id="acme",
            started_at=started,
            evidence=ConsentEvidence(
                ConsentPolicy.NOTIFY, "v1", ConsentState.GRANTED, None, started, None
            ),
            legs=legs,
            leg_starts_ms=((f"{call_id}-agent", 0), (f"{call_id}-caller", 0)),
            paused=(),
            masked=(),
            formats=RecordingRules().formats,
            trim_at_ms=None,
            erase=False,
            withdrawn=False,
        )
        pipeline = RecordingPipeline(
            RecordingStorage(tmp_path / "store"),
            spool,
            sessions,
            retry_initial_s=0.05,
            retry_max_s=0.2,
        )
        await set_connections(pg_database_url, allowed=False)
        try:
            processing = asyncio.create_task(pipeline.process(job))
            async with asyncio.timeout(20):
                while pipeline.retries < 3:
                    await asyncio.sleep(0.05)
            # The file is stored while the database is down.
            ((_, result),) = pipeline.processed
            assert result.wav is not None
            assert result.wav.path.exists()
            assert not processing.done()
        finally:
            await set_connections(pg_database_url, allowed=True)
        async with asyncio.timeout(20):
            await processing
        async with sessions() as session:
            row = await session.get(m.Recording, recording_id_for(uuid.UUID(call_id)))
        assert row is not None
        assert row.sha256 == result.wav.sha256
        assert row.duration_ms == result.wav.duration_ms
    finally:
        await engine.dispose()
