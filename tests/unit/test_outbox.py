"""The CDR outbox on a real filesystem (tmp_path), with an in-memory database
double that upserts by call id like DatabaseCdrSink. The real databases are
in tests/integration/test_cdr_outbox.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import typing
import uuid
import zlib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from pbx_controller.core.cdr import CdrRecord, Disposition, HangupSide
from pbx_controller.store import outbox as ob
from pbx_controller.store.outbox import (
    CdrOutbox,
    OutboxLocked,
    OutboxRecordError,
    cdr_from_dict,
    cdr_to_dict,
    decode_cdr,
    encode_cdr,
    frame,
    read_cursor,
    scan_frames,
    scan_outbox,
    segment_name,
)

T0 = datetime(2025, 3, 30, 0, 59, 59, 999_600, tzinfo=UTC)


def make_cdr(i: int, **changes: object) -> CdrRecord:
    cdr = CdrRecord(
        call_id=str(uuid.UUID(int=i + 1)),
        tenant_id="acme",
        direction="inbound",
        did="1001",
        caller=f"48500{i}",
        arrived_at=T0 + timedelta(seconds=i),
        answered_at=None,
        ended_at=T0 + timedelta(seconds=i + 3),
        disposition=Disposition.SERVED,
        hangup_side=HangupSide.SYSTEM,
    )
    return dataclasses.replace(cdr, **changes)  # type: ignore[arg-type]


def transient() -> OperationalError:
    return OperationalError("INSERT INTO cdr", {}, ConnectionRefusedError("connection refused"))


class MemorySink:
    """Upsert by call id, first write wins, like DatabaseCdrSink; can be down."""

    def __init__(self) -> None:
        self.rows: dict[str, CdrRecord] = {}
        self.order: list[str] = []  # every call id written, in write order
        self.batches = 0
        self.down = False
        self.failures = 0
        self.refuse: set[str] = set()
        self.written = asyncio.Event()

    async def write_many(self, cdrs: list[CdrRecord]) -> None:
        if self.down:
            self.failures += 1
            raise transient()
        if any(c.call_id in self.refuse for c in cdrs):
            raise IntegrityError("INSERT INTO cdr", {}, Exception("FOREIGN KEY constraint failed"))
        self.batches += 1
        for cdr in cdrs:
            self.order.append(cdr.call_id)
            self.rows.setdefault(cdr.call_id, cdr)
        self.written.set()


def outbox(directory: Path, sink: MemorySink, **kw: object) -> CdrOutbox:
    options: dict[str, object] = {"retry_initial_s": 0.01, "retry_max_s": 0.05}
    options.update(kw)
    return CdrOutbox(directory, sink, **options)  # type: ignore[arg-type]


async def wait_for(predicate: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.005)


# --------------------------------------------------------------------------
# JSON form
# --------------------------------------------------------------------------


def test_json_round_trip_keeps_every_field() -> None:
    cdr = make_cdr(
        3,
        answered_at=T0 + timedelta(seconds=4),
        queue_id="sales",
        agent_id="anna.k",
        wait_ms=1200,
        talk_ms=3000,
        hold_ms=5,
        consent="granted",
        recording_id=str(uuid.uuid4()),
        disposition=Disposition.ANSWERED,
        hangup_side=HangupSide.AGENT,
    )
    back = decode_cdr(encode_cdr(cdr))
    # Instants come back rounded to whole milliseconds (as the table stores them).
    assert back.arrived_at == datetime(2025, 3, 30, 1, 0, 3, tzinfo=UTC)
    assert back == dataclasses.replace(
        cdr,
        arrived_at=back.arrived_at,
        answered_at=back.answered_at,
        ended_at=back.ended_at,
    )


def test_json_round_trip_keeps_segments() -> None:
    segment_cls = _segment_type()
    start = T0 + timedelta(seconds=1)
    segments = tuple(
        segment_cls(**_segment_values(segment_cls, start + timedelta(seconds=i))) for i in range(2)
    )
    cdr = make_cdr(0, segments=segments)
    data = cdr_to_dict(cdr)
    assert isinstance(data["segments"], list)
    assert data["segments"][0]["started_at"] == "2025-03-30T01:00:01.000+00:00"
    back = decode_cdr(encode_cdr(cdr))
    assert len(back.segments) == 2
    assert [s.started_at for s in back.segments] == [
        datetime(2025, 3, 30, 1, 0, 1, tzinfo=UTC),
        datetime(2025, 3, 30, 1, 0, 2, tzinfo=UTC),
    ]
    bad = cdr_to_dict(cdr)
    bad["segments"][1]["surprise"] = 1
    with pytest.raises(OutboxRecordError, match=r"segments\[1\]: unknown fields"):
        cdr_from_dict(bad)
    # Records written before segments existed still read.
    del bad["segments"]
    assert cdr_from_dict(bad).segments == ()


def _segment_type() -> type:
    hint = typing.get_type_hints(CdrRecord)["segments"]
    return typing.get_args(hint)[0]  # type: ignore[no-any-return]


def _segment_values(cls: type, start: datetime) -> dict[str, object]:
    values: dict[str, object] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if hint is datetime:
            values[f.name] = start if "start" in f.name else start + timedelta(milliseconds=800)
        elif hint is int:
            values[f.name] = 1
        else:
            values[f.name] = "anna.k" if "agent" in f.name else "answered"
    return values


def test_json_form_is_utc_iso_with_ms_and_enums_by_value() -> None:
    warsaw = timezone(timedelta(hours=2))
    cdr = make_cdr(
        0,
        arrived_at=datetime(2025, 3, 30, 3, 0, 0, 123_499, tzinfo=warsaw),
        ended_at=datetime(2025, 3, 30, 3, 0, 1, 999_500, tzinfo=warsaw),
    )
    data = cdr_to_dict(cdr)
    assert data["v"] == 1
    assert data["arrived_at"] == "2025-03-30T01:00:00.123+00:00"
    # Half up, like the table's UTCDateTime, carrying into the next second.
    assert data["ended_at"] == "2025-03-30T01:00:02.000+00:00"
    assert data["answered_at"] is None
    assert data["disposition"] == "served"
    assert data["hangup_side"] == "system"
    assert set(data) - {"v"} == {f.name for f in dataclasses.fields(CdrRecord)}
    payload = encode_cdr(cdr)
    assert b"\n" not in payload
    assert payload.isascii()


def test_json_escapes_anything_a_caller_id_can_hold() -> None:
    cdr = make_cdr(0, caller='"Zo\u00eb\n\u2028" <\udcff485>')
    payload = encode_cdr(cdr)
    assert b"\n" not in payload
    assert payload.isascii()
    assert decode_cdr(payload).caller == cdr.caller


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v": 2}, "version"),
        ({"surprise": 1}, "unknown fields"),
        ({"arrived_at": "2025-03-30T01:00:00.123"}, "offset"),
        ({"arrived_at": "yesterday"}, "ISO"),
        ({"disposition": "hung"}, "unknown value"),
        ({"wait_ms": True}, "integer"),
        ({"wait_ms": -1}, "negative"),
        ({"did": 1001}, "string"),
        ({"ended_at": None}, "null"),
        ({"ended_at": "2025-03-30T00:00:00.000+00:00"}, "before"),
    ],
)
def test_decoder_refuses_what_it_cannot_trust(change: dict[str, object], message: str) -> None:
    data = cdr_to_dict(make_cdr(0)) | change
    with pytest.raises(OutboxRecordError, match=message):
        cdr_from_dict(data)


def test_decoder_refuses_missing_required_field_and_non_json() -> None:
    data = cdr_to_dict(make_cdr(0))
    del data["caller"]
    with pytest.raises(OutboxRecordError, match="missing field caller"):
        cdr_from_dict(data)
    with pytest.raises(OutboxRecordError, match="not JSON"):
        decode_cdr(b"{nope")
    with pytest.raises(OutboxRecordError, match="object"):
        decode_cdr(b"[1]")


def test_fields_with_defaults_may_be_absent() -> None:
    data = cdr_to_dict(make_cdr(0))
    del data["recording_id"], data["hold_ms"]
    cdr = cdr_from_dict(data)
    assert cdr.recording_id is None
    assert cdr.hold_ms == 0


# --------------------------------------------------------------------------
# Framing
# --------------------------------------------------------------------------


def test_frame_layout() -> None:
    line = frame(b'{"a":1}')
    assert line == b'00000007 %08x {"a":1}\n' % zlib.crc32(b'{"a":1}')
    with pytest.raises(ValueError, match="newline"):
        frame(b"a\nb")


def test_scan_reads_whole_lines_in_order() -> None:
    data = b"".join(frame(b"%d" % i) for i in range(5))
    frames, end, torn = scan_frames(data, 100, final=False)
    assert [f.payload for f in frames] == [b"0", b"1", b"2", b"3", b"4"]
    assert frames[0].offset == 100
    assert frames[-1].end == end == 100 + len(data)
    assert torn == 0
    frames, end, _ = scan_frames(data, 0, final=False, max_records=2)
    assert len(frames) == 2
    assert end == frames[1].end


def test_torn_tail_is_skipped_only_at_the_end() -> None:
    whole = frame(b"first") + frame(b"second")
    torn = whole + frame(b"third")[:-3]
    frames, end, torn_bytes = scan_frames(torn, 0, final=False)
    assert [f.payload for f in frames] == [b"first", b"second"]
    assert end == len(whole)
    assert torn_bytes == 0
    frames, end, torn_bytes = scan_frames(torn, 0, final=True)
    assert [f.payload for f in frames] == [b"first", b"second"]
    assert end == len(torn)
    assert torn_bytes == len(torn) - len(whole)
    # A zero-filled tail (file size extended, data lost) reads the same way.
    frames, _, torn_bytes = scan_frames(whole + b"\0" * 512, 0, final=True)
    assert len(frames) == 2
    assert torn_bytes == 512


def test_checksum_or_length_mismatch_is_corruption_not_the_end() -> None:
    good, bad = frame(b'{"ok":1}'), bytearray(frame(b'{"ok":2}'))
    bad[20] ^= 0x01  # a bit flip in the payload
    short = frame(b"abcdef")[:-4] + b"\n"  # complete line, payload too short
    garbage = b"hello world\n"
    data = good + bytes(bad) + short + garbage + good
    frames, end, torn = scan_frames(data, 0, final=True)
    assert [f.problem for f in frames] == [
        None,
        "checksum mismatch",
        "length 3 where the header says 6",
        "no record header",
        None,
    ]
    assert frames[1].payload is None
    assert frames[1].raw == bytes(bad)[:-1]
    assert end == len(data)
    assert torn == 0


def test_a_line_longer_than_any_record_does_not_stall_the_reader() -> None:
    data = b"x" * (ob.HEADER_LEN + ob.MAX_RECORD_BYTES + 10)
    frames, end, torn = scan_frames(data, 0, final=False)
    assert [f.problem for f in frames] == ["line longer than any record"]
    assert end == len(data)
    assert torn == 0


# --------------------------------------------------------------------------
# The outbox
# --------------------------------------------------------------------------


async def test_append_is_on_disk_before_it_returns(tmp_path: Path) -> None:
    sink = MemorySink()
    box = outbox(tmp_path / "outbox", sink)
    async with asyncio.timeout(10):
        await box.open()  # the writer is not started: nothing leaves the disk
        try:
            await box.append(make_cdr(0))
            snapshot = scan_outbox(tmp_path / "outbox")
            assert [c.call_id for c in snapshot.pending] == [make_cdr(0).call_id]
            assert snapshot.problems == []
            assert sink.rows == {}
        finally:
            assert await box.close(flush_timeout_s=0) is False
    # Still there for the next start.
    assert len(scan_outbox(tmp_path / "outbox").pending) == 1


async def test_delivers_in_order_across_segments_and_deletes_sent_ones(tmp_path: Path) -> None:
    sink = MemorySink()
    directory = tmp_path / "outbox"
    box = outbox(directory, sink, max_segment_bytes=2000, batch_size=7)
    cdrs = [make_cdr(i) for i in range(60)]
    async with asyncio.timeout(10):
        await box.open()
        for cdr in cdrs[:30]:
            await box.append(cdr)
        assert len(list(directory.glob("seg-*.log"))) > 3  # rotated
        box.start()
        for cdr in cdrs[30:]:
            await box.append(cdr)
        await box.wait_idle()
        assert await box.close() is True
    assert sink.order == [c.call_id for c in cdrs]
    assert sink.batches >= 60 // 7
    assert list(directory.glob("seg-*.log")) == []
    assert scan_outbox(directory).pending == []
    assert box.stats.delivered == 60
    assert box.stats.rejected == 0


async def test_concurrent_appends_share_fsyncs_and_keep_call_order(tmp_path: Path) -> None:
    sink = MemorySink()
    box = outbox(tmp_path / "outbox", sink)
    cdrs = [make_cdr(i) for i in range(200)]
    async with asyncio.timeout(10), box:
        await asyncio.gather(*(box.append(c) for c in cdrs))
        await box.wait_idle()
    assert sink.order == [c.call_id for c in cdrs]


class SlowSink(MemorySink):
    """A database that takes 30 ms per upsert, and remembers each batch's size."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    async def write_many(self, cdrs: list[CdrRecord]) -> None:
        await asyncio.sleep(0.03)
        self.sizes.append(len(cdrs))
        await super().write_many(cdrs)


async def test_steady_arrivals_are_delivered_in_lingered_batches(tmp_path: Path) -> None:
    # A CDR every 10 ms, an upsert of 30 ms: a writer that went straight on
    # after each batch would chase the two or three records that arrived
    # meanwhile, one upsert each, and never linger again.
    sink = SlowSink()
    box = outbox(tmp_path / "outbox", sink, linger_s=0.25)
    cdrs = [make_cdr(i) for i in range(60)]
    async with asyncio.timeout(10), box:
        for cdr in cdrs:
            await box.append(cdr)
            await asyncio.sleep(0.01)
        await box.wait_idle()
    assert sink.order == [c.call_id for c in cdrs]
    # About 0.8 s of arrivals in batches lingered 0.25 s each.
    assert len(sink.sizes) <= 5, sink.sizes


async def test_database_down_keeps_records_and_drains_them_in_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = MemorySink()
    sink.down = True
    directory = tmp_path / "outbox"
    box = outbox(directory, sink, database_url="postgresql://pbx:s3cret@db/pbx")
    cdrs = [make_cdr(i) for i in range(25)]
    async with asyncio.timeout(10):
        async with box:
            for cdr in cdrs[:10]:
                await box.append(cdr)
            await wait_for(lambda: sink.failures >= 3)
            for cdr in cdrs[10:]:
                await box.append(cdr)
            assert len(scan_outbox(directory).pending) == 25
            sink.down = False
            await box.wait_idle()
    assert sink.order == [c.call_id for c in cdrs]
    # After the outage the batch is read again: all 25 go in one upsert.
    assert sink.batches == 1
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "cannot write to postgresql://pbx:***@db/pbx" in messages
    assert "OperationalError" in messages or "ConnectionRefusedError" in messages
    assert "is back after" in messages
    assert "s3cret" not in messages


async def test_close_with_database_down_keeps_everything_for_the_next_start(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "outbox"
    down = MemorySink()
    down.down = True
    cdrs = [make_cdr(i) for i in range(12)]
    async with asyncio.timeout(10):
        box = outbox(directory, down, max_segment_bytes=1500)
        await box.open()
        box.start()
        for cdr in cdrs:
            await box.append(cdr)
        assert await box.close(flush_timeout_s=0.1) is False
        assert [c.call_id for c in scan_outbox(directory).pending] == [c.call_id for c in cdrs]

        up = MemorySink()
        again = outbox(directory, up)
        await again.open()
        assert again.stats.backlog_at_open == 12
        again.start()
        await again.append(make_cdr(99))
        await again.wait_idle()
        assert await again.close() is True
    # The backlog first, in order, then what came after the restart.
    assert up.order == [c.call_id for c in cdrs] + [make_cdr(99).call_id]
    assert list(directory.glob("seg-*.log")) == []


async def test_restart_after_commit_but_before_the_cursor_replays_harmlessly(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "outbox"
    sink = MemorySink()
    cdrs = [make_cdr(i) for i in range(5)]
    async with asyncio.timeout(10):
        box = outbox(directory, sink)
        await box.open()
        box.start()
        before = read_cursor(directory)
        for cdr in cdrs:
            await box.append(cdr)
        await box.wait_idle()
        # Simulate a crash right after the commit: the cursor as it was, the
        # segment still on disk (a graceful close would delete it).
        box._writer.cancel()  # type: ignore[union-attr]
        box._accepting = False
        saved = {p.name: p.read_bytes() for p in directory.glob("seg-*.log")}
        assert await box.close(flush_timeout_s=0) is True
        for name, data in saved.items():
            (directory / name).write_bytes(data)
        if before is None:
            (directory / "sent").unlink()
        assert len(scan_outbox(directory).pending) == 5

        replay = outbox(directory, sink)
        async with replay:
            assert replay.stats.backlog_at_open == 5
            await replay.wait_idle()
    assert sink.order == [c.call_id for c in cdrs] * 2  # delivered twice...
    assert list(sink.rows) == [c.call_id for c in cdrs]  # ...one row each


async def test_torn_tail_from_a_crash_is_ignored_and_new_records_go_to_a_new_segment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "outbox"
    directory.mkdir()
    whole = frame(encode_cdr(make_cdr(0))) + frame(encode_cdr(make_cdr(1)))
    (directory / segment_name(1)).write_bytes(whole + frame(encode_cdr(make_cdr(2)))[:40])
    sink = MemorySink()
    async with asyncio.timeout(10), outbox(directory, sink) as box:
        assert box.stats.backlog_at_open == 2
        await box.append(make_cdr(3))
        await box.wait_idle()
    assert sink.order == [make_cdr(i).call_id for i in (0, 1, 3)]
    assert box.stats.torn_bytes == 40
    assert "incomplete record of 40 bytes" in caplog.text
    assert not (directory / "rejected.log").exists()


async def test_corrupt_record_is_kept_aside_and_the_rest_delivered(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    directory.mkdir()
    bad = bytearray(frame(encode_cdr(make_cdr(1))))
    bad[-10] ^= 0x20
    bogus = frame(b'{"v":1,"call_id":"x"}')
    not_a_uuid = frame(encode_cdr(make_cdr(4, call_id="not-a-uuid")))
    (directory / segment_name(7)).write_bytes(
        frame(encode_cdr(make_cdr(0)))
        + bytes(bad)
        + bogus
        + not_a_uuid
        + frame(encode_cdr(make_cdr(2)))
    )
    sink = MemorySink()
    async with asyncio.timeout(10), outbox(directory, sink) as box:
        await box.wait_idle()
    assert sink.order == [make_cdr(0).call_id, make_cdr(2).call_id]
    rejected = [json.loads(f.payload or b"") for f in _frames(directory / "rejected.log")]
    assert [r["reason"] for r in rejected] == [
        "checksum mismatch",
        "missing field tenant_id",
        "call id 'not-a-uuid' is not a UUID",
    ]
    assert rejected[0]["raw_b64"]
    assert rejected[0]["segment"] == 7
    assert box.stats.rejected == 3


async def test_a_fresh_append_with_a_bad_key_is_kept_aside_too(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    sink = MemorySink()
    async with asyncio.timeout(10), outbox(directory, sink, linger_s=0) as box:
        for cdr in (make_cdr(0), make_cdr(1, call_id="not-a-uuid"), make_cdr(2)):
            box.write(cdr)
        await box.wait_idle()
    assert sink.order == [make_cdr(0).call_id, make_cdr(2).call_id]
    (rejected,) = [json.loads(f.payload or b"") for f in _frames(directory / "rejected.log")]
    assert rejected["reason"] == "call id 'not-a-uuid' is not a UUID"
    assert rejected["cdr"]["call_id"] == "not-a-uuid"


async def test_a_record_the_database_refuses_is_kept_aside_the_batch_goes_on(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "outbox"
    sink = MemorySink()
    sink.refuse = {make_cdr(2).call_id}
    box = outbox(directory, sink)
    async with asyncio.timeout(10):
        await box.open()
        for i in range(5):
            await box.append(make_cdr(i))
        box.start()
        await box.wait_idle()
        await box.close()
    assert sink.order == [make_cdr(i).call_id for i in (0, 1, 3, 4)]
    (rejected,) = [json.loads(f.payload or b"") for f in _frames(directory / "rejected.log")]
    assert rejected["reason"].startswith("database refused: Exception: FOREIGN KEY")
    assert cdr_from_dict(rejected["cdr"]).call_id == make_cdr(2).call_id


async def test_unsent_segments_are_never_deleted(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    sink = MemorySink()
    sink.down = True
    async with asyncio.timeout(10):
        box = outbox(directory, sink, max_segment_bytes=600)
        await box.open()
        box.start()
        for i in range(20):
            await box.append(make_cdr(i))
        await wait_for(lambda: sink.failures >= 2)
        segments = sorted(directory.glob("seg-*.log"))
        assert len(segments) >= 10
        await box.close(flush_timeout_s=0)
    assert sorted(directory.glob("seg-*.log")) == segments
    assert len(scan_outbox(directory).pending) == 20


async def test_a_second_process_cannot_take_the_outbox(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    async with asyncio.timeout(10), outbox(directory, MemorySink()):
        with pytest.raises(OutboxLocked, match="in use by another process"):
            await outbox(directory, MemorySink()).open()


async def test_a_broken_cursor_replays_from_the_oldest_segment(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    directory.mkdir()
    (directory / segment_name(3)).write_bytes(frame(encode_cdr(make_cdr(0))))
    (directory / "sent").write_bytes(b"v1 3 999 00000000\n")  # wrong checksum
    sink = MemorySink()
    async with asyncio.timeout(10), outbox(directory, sink) as box:
        await box.wait_idle()
    assert sink.order == [make_cdr(0).call_id]


def disk_full(box: CdrOutbox, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(data: bytes) -> tuple[int, int, int]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(box, "_write_line", full)


async def test_the_disk_refusing_a_record_falls_back_to_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sink = MemorySink()
    box = outbox(tmp_path / "outbox", sink)
    async with asyncio.timeout(10), box:
        disk_full(box, monkeypatch)
        await box.append(make_cdr(0))
        assert list(sink.rows) == [make_cdr(0).call_id]
        sink.down = True
        with pytest.raises(OSError, match="No space"):
            await box.append(make_cdr(1))
    # The last copy of the lost record is in the log, whole.
    assert make_cdr(1).call_id in caplog.text
    assert '"caller":"485001"' in caplog.text


async def test_write_takes_the_record_at_once_and_the_sync_thread_makes_it_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The executor's path: no await. The record is in the segment when write
    # returns (a killed controller loses nothing); the sync thread fdatasyncs
    # it without the loop waiting.
    synced: list[tuple[int, int]] = []
    real = ob._datasync

    def datasync(fd: int) -> None:
        real(fd)
        synced.append((fd, os.fstat(fd).st_size))

    monkeypatch.setattr(ob, "_datasync", datasync)
    directory = tmp_path / "outbox"
    box = outbox(directory, MemorySink())
    async with asyncio.timeout(10):
        await box.open()
        try:
            box.write(make_cdr(0))
            assert [c.call_id for c in scan_outbox(directory).pending] == [make_cdr(0).call_id]
            size = (directory / segment_name(1)).stat().st_size
            await wait_for(lambda: any(s >= size for _, s in synced))
            # A burst shares fdatasyncs (group commit) and keeps its order.
            for i in range(1, 200):
                box.write(make_cdr(i))
        finally:
            await box.close(flush_timeout_s=0)
    assert [c.call_id for c in scan_outbox(directory).pending] == [
        make_cdr(i).call_id for i in range(200)
    ]
    # close() waited for the last pass: everything written is synced.
    assert synced[-1][1] == (directory / segment_name(1)).stat().st_size
    assert len(synced) < 200


async def test_writes_within_the_group_window_share_one_fdatasync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At 25 CDRs/s each record had its own wake-up and fdatasync; in a window
    # the records of its moments share one pass. A pass someone awaits
    # (append) does not wait the window out.
    synced: list[int] = []
    real = ob._datasync

    def datasync(fd: int) -> None:
        real(fd)
        synced.append(os.fstat(fd).st_size)

    monkeypatch.setattr(ob, "_datasync", datasync)
    directory = tmp_path / "outbox"
    box = outbox(directory, MemorySink(), group_window_s=0.5)
    async with asyncio.timeout(10):
        await box.open()
        try:
            for i in range(5):  # spread over 0.2 s: inside one window
                box.write(make_cdr(i))
                await asyncio.sleep(0.04)
            size = (directory / segment_name(1)).stat().st_size
            await wait_for(lambda: any(s >= size for s in synced))
            assert synced == [size]  # one pass took all five
            started = asyncio.get_running_loop().time()
            box.write(make_cdr(5))  # opens a window...
            await box.append(make_cdr(6))  # ...that this does not wait out
            assert asyncio.get_running_loop().time() - started < 0.4
            assert synced[-1] == (directory / segment_name(1)).stat().st_size
        finally:
            await box.close(flush_timeout_s=0)


async def test_write_refused_by_the_disk_goes_straight_to_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = MemorySink()
    box = outbox(tmp_path / "outbox", sink)
    async with asyncio.timeout(10), box:
        disk_full(box, monkeypatch)
        box.write(make_cdr(0))
        assert not box.caught_up()  # the fallback is under way
        await box.wait_idle()
        assert list(sink.rows) == [make_cdr(0).call_id]


async def test_a_failed_fdatasync_seals_the_segment_and_nothing_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = ob._datasync
    failing = True

    def datasync(fd: int) -> None:
        if failing:
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(ob, "_datasync", datasync)
    sink = MemorySink()
    directory = tmp_path / "outbox"
    box = outbox(directory, sink, linger_s=0)
    async with asyncio.timeout(10), box:
        box.write(make_cdr(0))
        await wait_for(lambda: box.stats.sync_failures > 0)
        failing = False
        await box.append(make_cdr(1))  # a new segment, synced this time
        await box.wait_idle()
    assert sink.order == [make_cdr(0).call_id, make_cdr(1).call_id]
    assert "fdatasync of seg-00000000000000000001.log failed" in caplog.text
    assert "Input/output error" in caplog.text


async def test_append_waits_for_the_fdatasync_and_reports_its_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def datasync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(ob, "_datasync", datasync)
    sink = MemorySink()
    box = outbox(tmp_path / "outbox", sink)
    async with asyncio.timeout(10), box:
        # Not durable on disk: append falls back to the database at once.
        await box.append(make_cdr(0))
        assert list(sink.rows) == [make_cdr(0).call_id]


async def test_the_writer_delivers_fresh_appends_without_reading_them_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    real = ob._read_segment

    def counted(*args: typing.Any, **kwargs: typing.Any) -> typing.Any:
        result = real(*args, **kwargs)
        reads.append(len(result.frames))
        return result

    sink = MemorySink()
    box = outbox(tmp_path / "outbox", sink, linger_s=0.05)
    cdrs = [make_cdr(i) for i in range(40)]
    async with asyncio.timeout(10), box:
        monkeypatch.setattr(ob, "_read_segment", counted)
        for cdr in cdrs:
            box.write(cdr)
            await asyncio.sleep(0.002)
        await box.wait_idle()
    assert sink.order == [c.call_id for c in cdrs]
    assert sum(reads) == 0  # not one record read back from disk


async def test_appends_beyond_what_is_kept_in_memory_are_read_from_disk(
    tmp_path: Path,
) -> None:
    sink = MemorySink()
    sink.down = True
    box = outbox(tmp_path / "outbox", sink, batch_size=4, max_segment_bytes=3000)
    box.fresh_max = 5
    cdrs = [make_cdr(i) for i in range(30)]
    async with asyncio.timeout(10), box:
        for cdr in cdrs:
            box.write(cdr)
        await wait_for(lambda: sink.failures > 0)
        sink.down = False  # back: the oldest 25 come from disk, the rest from memory
        await box.wait_idle()
    assert sink.order == [c.call_id for c in cdrs]
    assert box.stats.delivered == 30


def test_scan_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    assert scan_outbox(tmp_path / "nothing").pending == []


def _frames(path: Path) -> list[ob.Frame]:
    frames, _, torn = scan_frames(path.read_bytes(), 0, final=True)
    assert torn == 0
    return frames


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pbx_controller.store.outbox")
