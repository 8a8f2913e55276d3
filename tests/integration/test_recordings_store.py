"""The `recording` table on both dialects: rows with consent evidence, the
CDR link in either order (and under a real race on PostgreSQL), erasure,
the retention purge on real files, and `pbxctl recordings` scoped to one
tenant."""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pbx_controller.cli.main import main
from pbx_controller.core.cdr import CdrRecord, Disposition, HangupSide
from pbx_controller.recordings.postprocess import RecordingFile
from pbx_controller.recordings.storage import RecordingStorage
from pbx_controller.store import models as m
from pbx_controller.store.cdr_writer import DatabaseCdrSink
from pbx_controller.store.db import make_engine, make_sessionmaker, upgrade_to_head
from pbx_controller.store.recordings import (
    ConsentProof,
    NewRecording,
    RecordingExists,
    UnknownTenant,
    add_recording,
    complete_recording,
    copy_id,
    flag_for_erasure,
    link_cdr,
    link_cdrs,
    list_recordings,
    lock_calls,
    purge,
    recordings_of_call,
)

NOW = m.utcnow()
CONSENT = ConsentProof(
    policy="opt_in",
    prompt_version="consent-v3",
    digit="1",
    digit_at=NOW - dt.timedelta(minutes=5),
    channel="1712345678.42",
)


@dataclass
class Env:
    url: str
    sessions: async_sessionmaker[AsyncSession]
    storage: RecordingStorage
    data_dir: Path


@pytest.fixture
async def env(database_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    await upgrade_to_head(database_url)
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    async with sessions() as session, session.begin():
        session.add(m.Tenant(id="acme", name="Acme", recording_retention_days=90))
        session.add(m.Tenant(id="beta", name="Beta", recording_retention_days=30))
    data_dir = tmp_path / "data"
    try:
        yield Env(database_url, sessions, RecordingStorage(data_dir / "recordings"), data_dir)
    finally:
        await engine.dispose()


def cdr(call_id: uuid.UUID, tenant: str = "acme", consent: str = "n/a") -> CdrRecord:
    return CdrRecord(
        call_id=str(call_id),
        tenant_id=tenant,
        direction="inbound",
        did="48221001",
        caller="48600100200",
        arrived_at=NOW - dt.timedelta(minutes=6),
        answered_at=NOW - dt.timedelta(minutes=5),
        ended_at=NOW,
        disposition=Disposition.ANSWERED,
        hangup_side=HangupSide.CALLER,
        talk_ms=300_000,
        consent=consent,
    )


async def start(
    env: Env,
    tenant: str = "acme",
    *,
    started_at: dt.datetime = NOW,
    call_id: uuid.UUID | None = None,
) -> NewRecording:
    call_id = call_id or uuid.uuid4()
    new = NewRecording(
        recording_id=uuid.uuid4(),
        call_id=call_id,
        tenant_id=tenant,
        path=env.storage.path_for(tenant, call_id, started_at, "wav").relative,
        started_at=started_at,
        consent=CONSENT,
    )
    await add_recording(env.sessions, new)
    return new


def write_file(
    env: Env, new: NewRecording, fmt: str = "wav", payload: bytes = b""
) -> RecordingFile:
    stored = env.storage.path_for(new.tenant_id, new.call_id, new.started_at, fmt)
    data = payload or f"audio of {new.call_id} as {fmt}".encode()
    env.storage.write_bytes(stored, data)
    return RecordingFile(
        stored.format,
        stored.relative,
        stored.absolute,
        61_000,
        hashlib.sha256(data).hexdigest(),
        len(data),
    )


async def stored_recording(
    env: Env, tenant: str = "acme", *, started_at: dt.datetime = NOW, formats: tuple[str, ...] = ()
) -> tuple[NewRecording, list[RecordingFile]]:
    new = await start(env, tenant, started_at=started_at)
    files = [write_file(env, new, fmt) for fmt in ("wav", *formats)]
    await complete_recording(env.sessions, new.recording_id, files, now=NOW)
    return new, files


async def cdr_row(env: Env, call_id: uuid.UUID) -> m.Cdr:
    async with env.sessions() as session:
        row = await session.get(m.Cdr, call_id)
    assert row is not None
    return row


async def recording_rows(env: Env, call_id: uuid.UUID) -> list[m.Recording]:
    async with env.sessions() as session:
        query = sa.select(m.Recording).where(m.Recording.call_id == call_id)
        return list((await session.scalars(query.order_by(m.Recording.format))).all())


# -- rows and the CDR link ------------------------------------------------------------


async def test_row_holds_consent_evidence_and_the_tenants_retention(env: Env) -> None:
    new = await start(env, "beta")
    [row] = await recording_rows(env, new.call_id)
    assert (row.id, row.tenant_id, row.path, row.format) == (
        new.recording_id,
        "beta",
        f"beta/{NOW:%Y}/{NOW:%m}/{new.call_id}.wav",
        "wav",
    )
    assert row.retention_until == NOW + dt.timedelta(days=30)
    assert row.created_at == NOW
    assert (row.duration_ms, row.sha256, row.erase_requested_at, row.deleted_at) == (None,) * 4
    assert (
        row.consent_policy,
        row.consent_prompt_version,
        row.consent_digit,
        row.consent_digit_at,
        row.consent_channel,
    ) == ("opt_in", "consent-v3", "1", CONSENT.digit_at, "1712345678.42")


async def test_recording_first_then_cdr(env: Env) -> None:
    new = await start(env)
    await DatabaseCdrSink(env.sessions).write(cdr(new.call_id))
    # The CDR writer links the waiting recording in its own transaction.
    row = await cdr_row(env, new.call_id)
    assert (row.recording_id, row.consent) == (new.recording_id, "granted")
    # Idempotent: again, or a replayed CDR, changes nothing.
    assert await link_cdr(env.sessions, new.call_id) is False
    await DatabaseCdrSink(env.sessions).write(cdr(new.call_id))
    assert (await cdr_row(env, new.call_id)).recording_id == new.recording_id


async def test_cdr_first_then_recording(env: Env) -> None:
    call_id = uuid.uuid4()
    await DatabaseCdrSink(env.sessions).write(cdr(call_id, consent="withdrawn"))
    new = await start(env, call_id=call_id)
    row = await cdr_row(env, call_id)
    # Linked; the core's consent outcome is kept as it was.
    assert (row.recording_id, row.consent) == (new.recording_id, "withdrawn")
    # Starting the same recording again (a retried action) is a no-op.
    await add_recording(env.sessions, new)
    assert len(await recording_rows(env, call_id)) == 1


async def test_one_recording_per_call_and_never_across_tenants(env: Env) -> None:
    new = await start(env)
    with pytest.raises(RecordingExists):
        await add_recording(
            env.sessions,
            NewRecording(uuid.uuid4(), new.call_id, "acme", new.path, NOW, CONSENT),
        )
    with pytest.raises(UnknownTenant):
        await start(env, "nobody")
    # A recording row of tenant beta never links acme's CDR of the same call id.
    call_id = uuid.uuid4()
    await DatabaseCdrSink(env.sessions).write(cdr(call_id, "acme"))
    await start(env, "beta", call_id=call_id)
    assert (await cdr_row(env, call_id)).recording_id is None


async def test_completion_stores_checksums_and_the_copies_rows(env: Env) -> None:
    new, files = await stored_recording(env, formats=("mp3", "opus"))
    rows = await recording_rows(env, new.call_id)
    assert [(r.format, r.path, r.sha256, r.duration_ms) for r in rows] == sorted(
        (f.format, f.relative, f.sha256, f.duration_ms) for f in files
    )
    ids = {r.format: r.id for r in rows}
    assert ids == {
        "wav": new.recording_id,
        "mp3": copy_id(new.recording_id, "mp3"),
        "opus": copy_id(new.recording_id, "opus"),
    }
    assert {(r.retention_until, r.consent_digit, r.consent_channel) for r in rows} == {
        (NOW + dt.timedelta(days=90), "1", "1712345678.42")
    }
    # A rerun of the completion (at-least-once) leaves the same rows.
    await complete_recording(env.sessions, new.recording_id, files, now=NOW)
    assert len(await recording_rows(env, new.call_id)) == 3
    # The CDR links the WAV row.
    await DatabaseCdrSink(env.sessions).write(cdr(new.call_id))
    await link_cdr(env.sessions, new.call_id)
    assert (await cdr_row(env, new.call_id)).recording_id == new.recording_id


async def test_nothing_kept_is_flagged_for_erasure(env: Env) -> None:
    new = await start(env)
    await complete_recording(env.sessions, new.recording_id, [], now=NOW)
    [row] = await recording_rows(env, new.call_id)
    assert row.erase_requested_at == NOW


async def test_withdrawal_flags_every_file_and_the_cdr(env: Env) -> None:
    new, _ = await stored_recording(env, formats=("mp3",))
    await DatabaseCdrSink(env.sessions).write(cdr(new.call_id, consent="granted"))
    await link_cdr(env.sessions, new.call_id)
    # Another tenant cannot flag it.
    assert await flag_for_erasure(env.sessions, "beta", new.call_id, now=NOW) == 0
    assert await flag_for_erasure(env.sessions, "acme", new.call_id, now=NOW, withdrawn=True) == 2
    assert await flag_for_erasure(env.sessions, "acme", new.call_id, now=NOW) == 0
    assert {r.erase_requested_at for r in await recording_rows(env, new.call_id)} == {NOW}
    assert (await cdr_row(env, new.call_id)).consent == "withdrawn"


@pytest.mark.postgres
async def test_concurrent_writers_cannot_both_miss_the_link(
    pg_database_url: str, tmp_path: Path
) -> None:
    """Both rows written, both links tried before either commits: without
    the per-call lock each transaction would miss the other's row."""
    await upgrade_to_head(pg_database_url)
    engine = make_engine(pg_database_url)
    sessions = make_sessionmaker(engine)
    try:
        async with sessions() as session, session.begin():
            session.add(m.Tenant(id="acme", name="Acme"))
        call_id = uuid.uuid4()
        storage = RecordingStorage(tmp_path)
        async with sessions() as cdr_tx, sessions() as rec_tx:
            await cdr_tx.begin()
            await cdr_tx.execute(sa.insert(m.Cdr).values(**cdr_values(call_id)))
            await rec_tx.begin()
            await lock_calls(rec_tx, [call_id])
            await rec_tx.execute(
                sa.insert(m.Recording).values(
                    id=(rec_id := uuid.uuid4()),
                    call_id=call_id,
                    tenant_id="acme",
                    path=storage.path_for("acme", call_id, NOW, "wav").relative,
                    format="wav",
                    retention_until=NOW,
                    consent_policy="notify",
                )
            )
            assert await link_cdrs(rec_tx, [call_id]) == 0  # the CDR is not committed
            backend = await cdr_tx.scalar(sa.select(sa.func.pg_backend_pid()))
            cdr_link = asyncio.create_task(link_cdrs(cdr_tx, [call_id]))
            async with asyncio.timeout(10):  # it waits for the recording's transaction
                while not await waiting_for_lock(sessions, backend):
                    await asyncio.sleep(0.02)
            await rec_tx.commit()
            async with asyncio.timeout(10):
                assert await cdr_link == 1
            await cdr_tx.commit()
        async with sessions() as session:
            row = await session.get(m.Cdr, call_id)
        assert row is not None
        assert row.recording_id == rec_id
    finally:
        await engine.dispose()


def cdr_values(call_id: uuid.UUID) -> dict[str, object]:
    from pbx_controller.store.cdr_writer import cdr_row as row

    return row(cdr(call_id))


async def waiting_for_lock(sessions: async_sessionmaker[AsyncSession], backend: int | None) -> bool:
    async with sessions() as session:
        event = await session.scalar(
            sa.text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"),
            {"pid": backend},
        )
    return bool(event == "Lock")


# -- purge ----------------------------------------------------------------------------------


async def test_purge_removes_files_then_marks_rows(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    old, old_files = await stored_recording(env, started_at=NOW - dt.timedelta(days=91))
    beta_old, beta_files = await stored_recording(
        env, "beta", started_at=NOW - dt.timedelta(days=31)
    )
    kept, kept_files = await stored_recording(env, started_at=NOW - dt.timedelta(days=89))
    erased, erased_files = await stored_recording(env, formats=("mp3",))
    await flag_for_erasure(env.sessions, "acme", erased.call_id, now=NOW, withdrawn=True)
    gone, gone_files = await stored_recording(env, started_at=NOW - dt.timedelta(days=100))
    gone_files[0].path.unlink()  # removed by hand, or by a purge that died before marking
    tampered, _ = await stored_recording(env, started_at=NOW - dt.timedelta(days=100))
    victim = env.data_dir / "not-a-recording.txt"
    victim.write_text("keep me")
    async with env.sessions() as session, session.begin():
        await session.execute(
            sa.update(m.Recording)
            .where(m.Recording.call_id == tampered.call_id)
            .values(path="acme/../../not-a-recording.txt")
        )

    caplog.set_level(logging.INFO, logger="pbx_controller.store.recordings")
    dry = await purge(env.sessions, env.storage, now=NOW, dry_run=True)
    assert len(dry.items) == 6
    assert all(f.path.exists() for f in old_files + beta_files + erased_files)
    assert "would purge recording" in caplog.text

    caplog.clear()
    report = await purge(env.sessions, env.storage, now=NOW)
    purged = {(i.tenant_id, i.call_id, i.format, i.reason, i.file_removed) for i in report.purged}
    assert purged == {
        ("acme", old.call_id, "wav", "retention", True),
        ("beta", beta_old.call_id, "wav", "retention", True),
        ("acme", erased.call_id, "wav", "erasure", True),
        ("acme", erased.call_id, "mp3", "erasure", True),
        ("acme", gone.call_id, "wav", "retention", False),
    }
    [failed] = report.failed
    assert failed.call_id == tampered.call_id
    assert victim.read_text() == "keep me"
    assert not any(f.path.exists() for f in old_files + beta_files + erased_files)
    assert kept_files[0].path.exists()
    # Each removal logged with tenant, call id, reason and path.
    for item in report.purged:
        assert f"tenant {item.tenant_id} call {item.call_id}" in caplog.text
        assert f"({item.reason}) {item.path}" in caplog.text
    assert "already missing" in caplog.text

    for call in (old, beta_old, erased, gone):
        assert {r.deleted_at for r in await recording_rows(env, call.call_id)} == {NOW}
    for call in (kept, tampered):
        assert {r.deleted_at for r in await recording_rows(env, call.call_id)} == {None}
    # The next run has only the tampered row left to refuse.
    again = await purge(env.sessions, env.storage, now=NOW)
    assert [i.call_id for i in again.items] == [tampered.call_id]


async def test_listing_is_scoped_to_one_tenant(env: Env) -> None:
    a, _ = await stored_recording(env, "acme")
    b, _ = await stored_recording(env, "beta")
    assert [r.call_id for r in await list_recordings(env.sessions, "acme")] == [a.call_id]
    assert [r.call_id for r in await recordings_of_call(env.sessions, "acme", a.call_id)] == [
        a.call_id
    ]
    assert await recordings_of_call(env.sessions, "acme", b.call_id) == []
    day = dt.timedelta(days=1)
    assert await list_recordings(env.sessions, "acme", since=NOW + day) == []
    assert len(await list_recordings(env.sessions, "acme", since=NOW - day, until=NOW + day)) == 1


# -- pbxctl recordings ------------------------------------------------------------------------


@pytest.fixture
def cli_env(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    monkeypatch.setenv("PBX_DATABASE__URL", env.url)
    monkeypatch.setenv("PBX_DATA_DIR", str(env.data_dir))
    monkeypatch.delenv("PBX_CONFIG", raising=False)
    monkeypatch.delenv("PBX_LOG_LEVEL", raising=False)
    # pbxctl sets up logging on the root logger: put pytest's back afterwards.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield env
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


async def pbxctl(*argv: str) -> int:
    # main() runs its own event loop: give it a thread.
    async with asyncio.timeout(60):
        return await asyncio.to_thread(main, ["recordings", *argv])


async def test_cli_list_show_export_one_tenant_only(
    cli_env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, a_files = await stored_recording(cli_env, "acme", formats=("mp3",))
    b, _ = await stored_recording(cli_env, "beta")
    capsys.readouterr()

    assert await pbxctl("list", "--tenant", "acme", "--format", "json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert {(r["call_id"], r["format"]) for r in listed} == {
        (str(a.call_id), "wav"),
        (str(a.call_id), "mp3"),
    }
    assert listed[0]["consent"]["digit"] == "1"
    assert await pbxctl("list", "--tenant", "acme", "--date", f"{NOW:%Y-%m-%d}") == 0
    table = capsys.readouterr().out
    assert str(a.call_id) in table
    assert str(b.call_id) not in table
    assert table.rstrip().endswith("2 recording files")
    tomorrow = NOW + dt.timedelta(days=1)
    assert await pbxctl("list", "--tenant", "acme", "--from", f"{tomorrow:%Y-%m-%d}") == 0
    assert capsys.readouterr().out.rstrip().endswith("0 recording files")

    assert await pbxctl("show", "--tenant", "acme", str(a.call_id)) == 0
    shown = capsys.readouterr().out
    assert a_files[0].sha256 in shown
    assert "consent-v3" in shown

    # Another tenant's call id reads exactly like one that does not exist.
    assert await pbxctl("show", "--tenant", "acme", str(b.call_id)) == 1
    other = capsys.readouterr().err.replace(str(b.call_id), "<id>")
    nobody = uuid.uuid4()
    assert await pbxctl("show", "--tenant", "acme", str(nobody)) == 1
    assert capsys.readouterr().err.replace(str(nobody), "<id>") == other
    assert (
        await pbxctl("export", "--tenant", "acme", str(b.call_id), "--out", str(tmp_path / "x"))
        == 1
    )
    assert not (tmp_path / "x").exists()

    out = tmp_path / "export.wav"
    assert await pbxctl("export", "--tenant", "acme", str(a.call_id), "--out", str(out)) == 0
    assert out.read_bytes() == a_files[0].path.read_bytes()
    assert out.stat().st_mode & 0o777 == 0o640
    # Never overwritten unless asked.
    assert await pbxctl("export", "--tenant", "acme", str(a.call_id), "--out", str(out)) == 2
    mp3 = tmp_path / "export.mp3"
    assert (
        await pbxctl(
            "export", "--tenant", "acme", str(a.call_id), "--audio", "mp3", "--out", str(mp3)
        )
        == 0
    )
    assert mp3.read_bytes() == a_files[1].path.read_bytes()

    # A stored file that no longer matches its checksum is not exported.
    a_files[0].path.write_bytes(b"tampered")
    assert (
        await pbxctl("export", "--tenant", "acme", str(a.call_id), "--out", str(out), "--force")
        == 1
    )
    assert "checksum mismatch" in capsys.readouterr().err
    assert out.read_bytes() != b"tampered"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


async def test_cli_exit_codes_for_bad_input(
    cli_env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await pbxctl("show", "--tenant", "acme", "not-a-uuid") == 2
    assert "not a call id" in capsys.readouterr().err
    assert await pbxctl("list", "--tenant", "nobody") == 2
    assert "no tenant 'nobody'" in capsys.readouterr().err
    assert await pbxctl("list", "--tenant", "acme", "--date", "2026-02-30") == 2
    assert (
        await pbxctl("list", "--tenant", "acme", "--date", "2026-03-01", "--to", "2026-03-02") == 2
    )
    with pytest.raises(SystemExit) as exit_info:  # argparse: --tenant is required
        await pbxctl("list")
    assert exit_info.value.code == 2
    capsys.readouterr()


async def test_cli_purge(cli_env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, files = await stored_recording(cli_env, started_at=NOW - dt.timedelta(days=91))
    keep, keep_files = await stored_recording(cli_env)
    capsys.readouterr()

    assert await pbxctl("purge", "--dry-run") == 0
    out, err = capsys.readouterr()
    assert "would purge 1 recording file(s)" in out
    assert f"would purge recording: tenant acme call {old.call_id} wav (retention)" in err
    assert files[0].path.exists()

    assert await pbxctl("purge") == 0
    out, err = capsys.readouterr()
    assert "purged 1 recording file(s) (0 already missing), 0 failed" in out
    assert (
        f"purged recording: tenant acme call {old.call_id} wav (retention) {files[0].relative}"
        in err
    )
    assert not files[0].path.exists()
    assert keep_files[0].path.exists()
    assert await pbxctl("show", "--tenant", "acme", str(old.call_id)) == 0
    assert "deleted" in capsys.readouterr().out
    target = tmp_path / "old.wav"
    assert await pbxctl("export", "--tenant", "acme", str(old.call_id), "--out", str(target)) == 1
    assert "was deleted at" in capsys.readouterr().err
    assert not target.exists()

    # Overlapping cron runs: the second one does nothing, successfully.
    lock = os.open(cli_env.storage.base / ".purge.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert await pbxctl("purge") == 0
        assert "another `recordings purge` is running" in capsys.readouterr().err
    finally:
        os.close(lock)

    # A row it must refuse makes the run exit 1 (cron mails it).
    async with cli_env.sessions() as session, session.begin():
        await session.execute(
            sa.update(m.Recording)
            .where(m.Recording.call_id == keep.call_id)
            .values(path="/etc/passwd", erase_requested_at=NOW)
        )
    assert await pbxctl("purge") == 1
    assert "not purged" in capsys.readouterr().err
