"""The durable local CDR outbox: append and fsync, then the database, then "sent".

ARCHITECTURE principle 4. The executor's `EmitCdr` calls `write(cdr)`; the
record is in the segment file before that returns, and fdatasync'd by the
sync thread moments later (`append(cdr)` waits for that). A writer task
upserts what is in the segments into the database in batches, in the order it
was appended, and only after the commit moves the "sent" cursor past it. A
controller crash at any point loses nothing `write` took (the kernel holds
it); a power cut, nothing older than the sync thread's group window (0.2 s)
and its pass. A crash between the commit and the
cursor replays at most one batch, which the upsert (keyed by the call id,
first write wins) turns into no change. While the database is down the
service keeps taking calls: records wait here and the writer retries with a
capped, jittered backoff.

On disk, one directory (`settings.data_dir / "outbox"`):

    lock                          flock'd by the one process using the outbox
    seg-00000000000000000001.log  segments: append-only record lines, numbered in order
    sent                          the cursor: every record before (segment, offset) is committed
    rejected.log                  what the database refused for good, and corrupt lines

A record is one line, length and CRC-32 of the payload in front of it:

    "%08x %08x " % (len(payload), crc32(payload)) + payload + "\\n"

The payload is compact ASCII JSON (`cdr_to_dict`), which never contains a raw
newline, so the newline ends the record. A last line without its newline is
the torn tail of a crash during an append that never returned: it is skipped
(and logged), never delivered. A complete line whose length or checksum does
not match is corruption: it goes to `rejected.log`, with its bytes, for an
operator, and the records after it are still delivered.

Why segments *and* a cursor. Segments give bounded disk without rewriting a
file: once a sealed segment is fully sent it is deleted, and unsent records
are never deleted. The cursor bounds the replay after a crash to the one
batch that was in flight; without it a restart would replay the whole live
segment, thousands of rows the upsert would absorb, and resurrect any CDR
deleted on purpose since. A new segment starts when the current one passes
`max_segment_bytes`, and on every start (nothing is ever appended after a
possibly torn tail).

Fsync points:

1. `write`: the sync thread fdatasyncs the segment within `group_window_s`
   (0.2 s) of a record's append (fdatasync: the file size is flushed with
   the data, as PostgreSQL's WAL does). The records appended in that window
   share one pass (group commit, as PostgreSQL's commit_delay): measured at
   25 CDRs/s, a wake-up and an fdatasync per record cost the process 0.7 ms
   of CPU per CDR. `append` (and a stop) does not wait out the window. The
   event loop writes; it never waits for the disk.
2. A new segment, `rejected.log` or the outbox directory itself: the parent
   directory is fsync'd once the file exists (for a segment: by the sync
   thread, with its first records).
3. The cursor: `sent.tmp` is written and fsync'd, then renamed over `sent`.
   The directory is not fsync'd: a power cut that loses the rename only rolls
   the cursor back, which replays one batch into the idempotent upsert.
4. `rejected.log`: fdatasync'd before the cursor moves past the record.
5. Unlinking a sent segment: no fsync; a segment that comes back is behind the
   cursor and is deleted again on the next start.

A missing or unreadable cursor means "replay everything still on disk":
always safe, at the price of a longer replay.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import enum
import fcntl
import json
import logging
import operator
import os
import queue
import re
import threading
import time
import types
import typing
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DataError, DBAPIError, IntegrityError, StatementError

from pbx_controller.backoff import backoff_s
from pbx_controller.core.cdr import CdrRecord
from pbx_controller.store.db import redact_url

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "BatchCdrSink",
    "CdrOutbox",
    "Frame",
    "OutboxClosed",
    "OutboxError",
    "OutboxLocked",
    "OutboxRecordError",
    "OutboxSnapshot",
    "OutboxStats",
    "cdr_from_dict",
    "cdr_to_dict",
    "decode_cdr",
    "describe_database_error",
    "encode_cdr",
    "frame",
    "read_cursor",
    "scan_frames",
    "scan_outbox",
    "segment_name",
]

FORMAT_VERSION = 1
HEADER_LEN = 18  # "%08x %08x "
MAX_RECORD_BYTES = 64 * 1024  # a CDR is well under 2 KiB; anything longer is corruption
READ_CHUNK_BYTES = 1024 * 1024
# 17 columns per CDR row: 500 rows stay far below the bind-parameter limits
# of asyncpg (32767) and SQLite (32766).
DEFAULT_BATCH_SIZE = 500
DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024
FRESH_MAX = 2000  # appended records kept as objects for delivery (a few MB)

LOCK_NAME = "lock"
CURSOR_NAME = "sent"
REJECTED_NAME = "rejected.log"
_SEGMENT_RE = re.compile(r"^seg-(\d{20})\.log$")
_HEADER_RE = re.compile(rb"^([0-9a-f]{8}) ([0-9a-f]{8}) $")
_CURSOR_RE = re.compile(rb"^v1 (\d{1,20}) (\d{1,20}) ([0-9a-f]{8})\n$")


class OutboxError(Exception):
    """The outbox cannot be used (a problem with its directory or files)."""


class OutboxLocked(OutboxError):
    """Another process holds the outbox directory."""


class OutboxClosed(OutboxError):
    """`write` after `close`."""


class _RetryLater(Exception):
    """The database failed; the backoff has passed; read the batch again."""


class OutboxRecordError(ValueError):
    """A payload that is not a CDR this version can read."""


class BatchCdrSink(Protocol):
    """Where the outbox delivers to: an idempotent batch upsert keyed by call id."""

    async def write_many(self, cdrs: list[CdrRecord]) -> None: ...


# --------------------------------------------------------------------------
# CdrRecord <-> JSON
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    kind: Any  # str, int, datetime, an Enum class, or a _Items
    optional: bool
    has_default: bool
    # Its JSON form from a value that is not None; None: the value itself.
    # Chosen once per field, not per record: a CDR is encoded on every call.
    dump: Callable[[Any], Any] | None = None


@dataclass(frozen=True, slots=True)
class _Items:
    """A `tuple[SomeDataclass, ...]` field: a JSON list of objects."""

    cls: type
    fields: tuple[_Field, ...]


def _schema(cls: type) -> tuple[_Field, ...]:
    """How each field of the dataclass `cls` maps to JSON."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        optional = False
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            optional = len(args) < len(typing.get_args(hint))
            if len(args) != 1:
                raise TypeError(f"{cls.__name__}.{f.name}: no JSON form for {hint}")
            hint = args[0]
        kind: Any
        item = typing.get_args(hint)
        if typing.get_origin(hint) is tuple and len(item) == 2 and item[1] is Ellipsis:
            if not (isinstance(item[0], type) and dataclasses.is_dataclass(item[0])):
                raise TypeError(f"{cls.__name__}.{f.name}: no JSON form for {hint}")
            kind = _Items(item[0], _schema(item[0]))
        elif hint in (str, int, datetime) or (
            isinstance(hint, type) and issubclass(hint, enum.Enum)
        ):
            kind = hint
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no JSON form for {hint}")
        has_default = (
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        )
        out.append(_Field(f.name, kind, optional, has_default, _dumper(kind)))
    return tuple(out)


def _dumper(kind: Any) -> Callable[[Any], Any] | None:
    if isinstance(kind, _Items):
        fields = kind.fields
        return lambda items: [_dump(item, fields) for item in items]
    if kind is datetime:
        return _iso_ms
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return operator.attrgetter("value")
    return None


def _iso_ms(value: datetime) -> str:
    """UTC ISO 8601 with milliseconds, rounded half up as the `cdr` table stores it."""
    utc = value.astimezone(UTC) + timedelta(microseconds=500)
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000).isoformat(
        timespec="milliseconds"
    )


def _dump(obj: Any, fields: tuple[_Field, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields:
        value = getattr(obj, f.name)
        out[f.name] = value if value is None or f.dump is None else f.dump(value)
    return out


# Derived from the dataclass, so a field added to CdrRecord is carried (and
# a type with no JSON form fails at import, not in production).
_FIELDS = _schema(CdrRecord)


def _load(data: Any, cls: type, fields: tuple[_Field, ...], where: str) -> Any:
    if not isinstance(data, dict):
        raise OutboxRecordError(f"{where}: not a JSON object")
    unknown = set(data) - {f.name for f in fields}
    if unknown:
        raise OutboxRecordError(f"{where}: unknown fields {sorted(unknown)}")
    values: dict[str, Any] = {}
    for f in fields:
        name = f.name if where == "record" else f"{where}.{f.name}"
        if f.name not in data:
            if f.has_default:
                continue
            raise OutboxRecordError(f"missing field {name}")
        raw = data[f.name]
        if raw is None:
            if not f.optional:
                raise OutboxRecordError(f"{name} must not be null")
            values[f.name] = None
        elif isinstance(f.kind, _Items):
            if not isinstance(raw, list):
                raise OutboxRecordError(f"{name} must be a list")
            values[f.name] = tuple(
                _load(item, f.kind.cls, f.kind.fields, f"{name}[{i}]") for i, item in enumerate(raw)
            )
        elif f.kind is datetime:
            values[f.name] = _parse_instant(name, raw)
        elif issubclass(f.kind, enum.Enum):
            try:
                values[f.name] = f.kind(raw)
            except ValueError:
                raise OutboxRecordError(f"{name}: unknown value {raw!r}") from None
        elif f.kind is int:
            if not isinstance(raw, int) or isinstance(raw, bool):
                raise OutboxRecordError(f"{name} must be an integer")
            values[f.name] = raw
        else:
            if not isinstance(raw, str):
                raise OutboxRecordError(f"{name} must be a string")
            values[f.name] = raw
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise OutboxRecordError(f"{where}: {exc}") from None


def cdr_to_dict(cdr: CdrRecord) -> dict[str, Any]:
    """The record's JSON form: instants as UTC ISO with ms, enums by value,
    nested records (segments) as lists of objects."""
    return {"v": FORMAT_VERSION, **_dump(cdr, _FIELDS)}


def cdr_from_dict(data: Any) -> CdrRecord:
    """The inverse of `cdr_to_dict`; raises OutboxRecordError on anything else.

    Strict: an unknown field is an error, not something to drop silently (a
    record written by a newer version goes to rejected.log, whole). A missing
    field that has a default takes it (records from before it existed).
    """
    if not isinstance(data, dict):
        raise OutboxRecordError("not a JSON object")
    if data.get("v") != FORMAT_VERSION:
        raise OutboxRecordError(f"unknown record version {data.get('v')!r}")
    body = {k: v for k, v in data.items() if k != "v"}
    cdr: CdrRecord = _load(body, CdrRecord, _FIELDS, "record")
    return cdr


def _parse_instant(name: str, raw: Any) -> datetime:
    if not isinstance(raw, str):
        raise OutboxRecordError(f"{name} must be an ISO timestamp")
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise OutboxRecordError(f"{name}: not an ISO timestamp: {raw!r}") from None
    if value.utcoffset() is None:
        raise OutboxRecordError(f"{name} has no UTC offset")
    return value.astimezone(UTC)


def encode_cdr(cdr: CdrRecord) -> bytes:
    """Compact ASCII JSON: no raw newline can occur in it."""
    return json.dumps(cdr_to_dict(cdr), separators=(",", ":"), ensure_ascii=True).encode("ascii")


def decode_cdr(payload: bytes) -> CdrRecord:
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OutboxRecordError(f"not JSON: {exc}") from None
    return cdr_from_dict(data)


# --------------------------------------------------------------------------
# Framing
# --------------------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    """One record line: length and CRC-32 of the payload, the payload, a newline."""
    if b"\n" in payload:
        raise ValueError("a payload must not contain a newline")
    if len(payload) > MAX_RECORD_BYTES:
        raise ValueError(f"a payload must not exceed {MAX_RECORD_BYTES} bytes")
    return b"%08x %08x " % (len(payload), zlib.crc32(payload)) + payload + b"\n"


@dataclass(frozen=True, slots=True)
class Frame:
    """One line of a segment: a payload, or the reason it is unusable."""

    offset: int  # where the line starts in its segment
    end: int  # just after its newline
    payload: bytes | None
    problem: str | None = None
    raw: bytes = b""  # the line's bytes, kept when it is corrupt


def _check_line(line: bytes) -> tuple[bytes | None, str | None]:
    header = _HEADER_RE.match(line[:HEADER_LEN])
    if header is None:
        return None, "no record header"
    length, crc = int(header[1], 16), int(header[2], 16)
    payload = line[HEADER_LEN:]
    if len(payload) != length:
        return None, f"length {len(payload)} where the header says {length}"
    if zlib.crc32(payload) != crc:
        return None, "checksum mismatch"
    return payload, None


def scan_frames(
    data: bytes, base: int, *, final: bool, max_records: int | None = None
) -> tuple[list[Frame], int, int]:
    """Split `data` (read from offset `base`) into record frames.

    Returns (frames, next offset, torn bytes). An incomplete last line stays
    unread unless `final` (end of what may be read): then it is a torn tail,
    skipped and counted. A chunk with no newline at all that is longer than
    any record is reported as corrupt, so a reader always moves on.
    """
    frames: list[Frame] = []
    pos = 0
    while pos < len(data) and (max_records is None or len(frames) < max_records):
        newline = data.find(b"\n", pos)
        if newline < 0:
            rest = len(data) - pos
            if final:
                return frames, base + len(data), rest
            if rest > HEADER_LEN + MAX_RECORD_BYTES:
                raw = data[pos:]
                frames.append(
                    Frame(base + pos, base + len(data), None, "line longer than any record", raw)
                )
                pos = len(data)
            break
        line = data[pos:newline]
        payload, problem = _check_line(line)
        frames.append(
            Frame(
                base + pos, base + newline + 1, payload, problem, b"" if problem is None else line
            )
        )
        pos = newline + 1
    return frames, base + pos, 0


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def segment_name(seq: int) -> str:
    return f"seg-{seq:020d}.log"


def _list_segments(directory: Path) -> list[int]:
    seqs = []
    for entry in os.scandir(directory):
        match = _SEGMENT_RE.match(entry.name)
        if match and entry.is_file():
            seqs.append(int(match[1]))
    return sorted(seqs)


def _encode_cursor(seq: int, offset: int) -> bytes:
    body = b"v1 %d %d" % (seq, offset)
    return body + b" %08x\n" % zlib.crc32(body)


def read_cursor(directory: Path) -> tuple[int, int] | None:
    """The sent cursor (segment, offset), or None if missing or unreadable."""
    try:
        data = (directory / CURSOR_NAME).read_bytes()
    except FileNotFoundError:
        return None
    match = _CURSOR_RE.match(data)
    if match is None or zlib.crc32(b"v1 %s %s" % (match[1], match[2])) != int(match[3], 16):
        log.warning("CDR outbox: the sent cursor in %s is unreadable; replaying all", directory)
        return None
    return int(match[1]), int(match[2])


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@dataclass(frozen=True, slots=True)
class _Read:
    frames: list[Frame]
    next_offset: int
    at_end: bool
    torn: int


def _read_segment(
    path: Path, offset: int, limit: int | None, max_records: int | None = None
) -> _Read:
    """Frames of one segment from `offset`, up to `limit` bytes (None: its end)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return _Read([], offset, True, 0)
    try:
        end = os.fstat(fd).st_size if limit is None else limit
        frames: list[Frame] = []
        torn = 0
        pos = offset
        while pos < end and (max_records is None or len(frames) < max_records):
            chunk = os.pread(fd, min(READ_CHUNK_BYTES, end - pos), pos)
            if not chunk:  # shorter than `limit`: the file was truncated under us
                break
            final = pos + len(chunk) >= end
            left = None if max_records is None else max_records - len(frames)
            new, pos_after, torn = scan_frames(chunk, pos, final=final, max_records=left)
            frames.extend(new)
            if pos_after == pos:
                break  # an incomplete line that is not final: wait for more
            pos = pos_after
        return _Read(frames, pos, pos >= end, torn)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class OutboxSnapshot:
    """What an outbox directory holds, read without taking it over."""

    cursor: tuple[int, int] | None
    segments: list[int]
    pending: list[CdrRecord]
    problems: list[str]


def scan_outbox(directory: Path) -> OutboxSnapshot:
    """The records of `directory` not yet marked sent, in order (for ops and tests).

    Safe while the owning process runs: it reads only whole lines.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return OutboxSnapshot(None, [], [], [])
    cursor = read_cursor(directory)
    segments = _list_segments(directory)
    pending: list[CdrRecord] = []
    problems: list[str] = []
    for seq in segments:
        if cursor is not None and seq < cursor[0]:
            continue
        start = cursor[1] if cursor is not None and seq == cursor[0] else 0
        result = _read_segment(directory / segment_name(seq), start, None)
        for f in result.frames:
            if f.payload is None:
                problems.append(f"{segment_name(seq)}@{f.offset}: {f.problem}")
                continue
            try:
                pending.append(decode_cdr(f.payload))
            except OutboxRecordError as exc:
                problems.append(f"{segment_name(seq)}@{f.offset}: {exc}")
        if result.torn:
            # The owner may be mid-append: only a sealed segment's tail is torn.
            problems.append(f"{segment_name(seq)}: incomplete tail of {result.torn} bytes")
    return OutboxSnapshot(cursor, segments, pending, problems)


# --------------------------------------------------------------------------
# The sync thread
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Synced:
    """One segment after a sync pass: durable up to `size`, unless `error`."""

    seq: int
    size: int
    error: OSError | None = None


class _Syncer:
    """fdatasyncs the segments the event loop appends to, on its own thread.

    Each pass takes everything appended before it (group commit): at 25 CDRs
    per second that is one record a pass; in a burst, many. The loop hands
    over a segment's fd with `dirty` and `retire` and never waits; it hears
    back (`report`, called on this thread) only about a pass that someone
    awaits (`notify`) or that failed.
    """

    def __init__(
        self,
        directory: Path,
        report: Callable[[list[_Synced]], object],
        group_window_s: float = 0.0,
    ) -> None:
        self.directory = directory
        self.report = report
        self.group_window_s = group_window_s
        # The hand-over: a C queue, the cheapest wake-up of another thread
        # (a threading.Condition cost the loop 1.7% of its time).
        self._inbox: queue.SimpleQueue[tuple[str, int, _Dirty | None]] = queue.SimpleQueue()
        # Set for what must not wait out the window: a sync someone awaits, a stop.
        self._urgent = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cdr-outbox-sync", daemon=True)
        self._thread.start()

    def dirty(self, fd: int, seq: int, size: int, *, directory: bool, notify: bool) -> None:
        self._inbox.put(("dirty", fd, _Dirty(seq, size, directory, notify)))
        if notify:
            self._urgent.set()

    def retire(self, fd: int) -> None:
        self._inbox.put(("retire", fd, None))

    def stop(self) -> None:
        """Finish the last pass (everything handed over is synced and closed)."""
        self._inbox.put(("stop", -1, None))
        self._urgent.set()
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            items = [self._inbox.get()]
            if self.group_window_s > 0:
                # Let the records of the next moments share this pass: one
                # wake-up and one fdatasync for them all, not one each. A
                # pass someone awaits (append, stop) starts at once.
                self._urgent.wait(self.group_window_s)
                self._urgent.clear()
            while not self._inbox.empty():
                items.append(self._inbox.get_nowait())
            dirty: dict[int, _Dirty] = {}  # fd -> what to sync of it (the latest size)
            retired: list[int] = []
            for kind, fd, d in items:
                if kind == "dirty":
                    assert d is not None
                    old = dirty.get(fd)
                    if old is not None:
                        d = _Dirty(
                            d.seq, d.size, d.directory or old.directory, d.notify or old.notify
                        )
                    dirty[fd] = d
                elif kind == "retire":
                    retired.append(fd)
                else:
                    stopping = True
            done = [self._sync(fd, d) for fd, d in dirty.items()]
            for fd in retired:  # after their sync above: the loop appends no more to them
                with contextlib.suppress(OSError):
                    os.close(fd)
            wanted = any(d.notify for d in dirty.values())
            if wanted or any(s.error is not None for s in done):
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    self.report(done)

    def _sync(self, fd: int, d: _Dirty) -> _Synced:
        try:
            _datasync(fd)
            if d.directory:
                _fsync_dir(self.directory)
        except OSError as exc:
            return _Synced(d.seq, d.size, exc)
        return _Synced(d.seq, d.size)


@dataclass(frozen=True, slots=True)
class _Dirty:
    seq: int
    size: int  # appended up to here
    directory: bool  # the segment is new: fsync the directory too
    notify: bool  # someone awaits this pass


# --------------------------------------------------------------------------
# The outbox
# --------------------------------------------------------------------------

# The database refused these records themselves: retrying cannot help.
_PERMANENT_ERRORS: tuple[type[BaseException], ...] = (IntegrityError, DataError)


def is_permanent_database_error(exc: BaseException) -> bool:
    """The database (or the statement built for it) refuses these very records.

    Everything else (connection refused, timeouts, a locked SQLite file, a
    missing table before a migration) is retried: a record sent to
    rejected.log needs an operator, one that waits only needs the database.
    """
    if isinstance(exc, _PERMANENT_ERRORS):
        return True
    # Bind-parameter processing (a bad value) fails before any DBAPI call.
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


@dataclass
class OutboxStats:
    appended: int = 0
    delivered: int = 0  # records upserted (replays of committed ones included)
    rejected: int = 0  # moved to rejected.log
    torn_bytes: int = 0
    backlog_at_open: int = 0  # unsent records found on start
    database_failures: int = 0
    last_error: str | None = None
    sync_failures: int = 0  # fdatasync passes that failed
    append_seconds: list[float] = field(default_factory=list, repr=False)


class CdrOutbox:
    """The CDR sink the executor writes to: durable first, database second.

    Life cycle: `await open()`, `start()` the writer, `write()` CDRs,
    `await close(flush_timeout_s)`; or `async with CdrOutbox(...) as outbox:`.
    """

    def __init__(
        self,
        directory: Path,
        sink: BatchCdrSink,
        *,
        database_url: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        retry_initial_s: float = 0.25,
        retry_max_s: float = 5.0,
        write_timeout_s: float = 10.0,
        outage_log_every_s: float = 60.0,
        keep_latencies: bool = False,
        # Measured at 25 CDRs/s on SQLite: 0.1 s -> 2.9 ms of CPU per CDR,
        # 1 s -> 1.5 ms (bigger batches share one upsert and one cursor fsync).
        linger_s: float = 1.0,
        # How long the sync thread lets more records join a pass (see above).
        group_window_s: float = 0.2,
    ) -> None:
        if batch_size < 1 or max_segment_bytes < 1:
            raise ValueError("batch_size and max_segment_bytes must be positive")
        self.directory = Path(directory)
        self.sink = sink
        self.batch_size = batch_size
        self.max_segment_bytes = max_segment_bytes
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.write_timeout_s = write_timeout_s
        self.outage_log_every_s = outage_log_every_s
        self.keep_latencies = keep_latencies
        self.linger_s = linger_s
        self.group_window_s = group_window_s
        self.stats = OutboxStats()
        self._database = redact_url(database_url) if database_url else "the database"
        self._url = database_url

        self._opened = False
        self._accepting = False
        self._lock_fd: int | None = None
        # The delivery side's file work runs on its own thread, in order, so
        # a cancelled await never leaves two operations racing on one file.
        self._drain_io: ThreadPoolExecutor | None = None
        self._syncer: _Syncer | None = None  # fdatasyncs what the loop appended

        # The live segment, appended to by the event loop.
        self._fd: int | None = None
        self._fd_seq = 0
        self._fd_size = 0
        self._next_seq = 1
        self._dir_unsynced = False  # a segment was created since the last directory fsync

        # Event-loop state.
        self._sizes: dict[int, int] = {}  # known segments -> bytes readable
        self._live_seq: int | None = None  # the segment appends go to
        self._read_pos = (1, 0)
        self._sent_pos: tuple[int, int] | None = None
        self._sync_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        # The latest appends as objects, (segment, start, end, record): the
        # writer delivers these without reading and decoding them back, as
        # long as they continue exactly where it stands. Bounded: while the
        # database is down the oldest go, and are read from disk later.
        self._fresh: deque[tuple[int, int, int, CdrRecord]] = deque()
        self.fresh_max = FRESH_MAX
        self._fallbacks: set[asyncio.Task[None]] = set()  # the disk refused: to the database
        self._writer: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._hurry = asyncio.Event()  # a full batch waits, or close(): stop lingering
        self._changed = asyncio.Event()
        self._down_since: float | None = None
        self._failures = 0  # consecutive database failures, for the backoff
        self._last_outage_log = 0.0

    # -- life cycle -------------------------------------------------------------

    async def open(self) -> None:
        """Take the directory, read the cursor, drop sent segments, find the backlog."""
        if self._opened:
            return
        self._drain_io = ThreadPoolExecutor(1, thread_name_prefix="cdr-outbox-drain")
        try:
            backlog = await self._on_drain_thread(self._open_sync)
        except BaseException:
            self._release()
            raise
        loop = asyncio.get_running_loop()
        self._syncer = _Syncer(
            self.directory,
            lambda done: loop.call_soon_threadsafe(self._synced, done),
            self.group_window_s,
        )
        self._opened = self._accepting = True
        self.stats.backlog_at_open = backlog
        if backlog:
            log.warning(
                "CDR outbox %s: %d CDR(s) from an earlier run wait for %s; delivering them first",
                self.directory,
                backlog,
                self._database,
            )
        else:
            log.info("CDR outbox %s: empty", self.directory)

    def _open_sync(self) -> int:
        created = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        if created:
            _fsync_dir(self.directory.parent)
        lock_fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(lock_fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(lock_fd)
            raise OutboxLocked(
                f"the CDR outbox {self.directory} is in use by another process (pid {holder})"
            ) from None
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = lock_fd

        cursor = read_cursor(self.directory)
        segments = _list_segments(self.directory)
        sent_seq, sent_off = cursor if cursor is not None else (0, 0)
        for seq in [s for s in segments if s < sent_seq]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / segment_name(seq))
        segments = [s for s in segments if s >= sent_seq]
        self._sizes = {s: (self.directory / segment_name(s)).stat().st_size for s in segments}
        self._next_seq = max([sent_seq, *segments]) + 1
        self._sent_pos = cursor
        if segments and segments[0] == sent_seq:
            self._read_pos = (sent_seq, sent_off)
        elif segments:
            self._read_pos = (segments[0], 0)
        else:
            self._read_pos = (self._next_seq, 0)
        backlog = 0
        for seq in segments:
            start = self._read_pos[1] if seq == self._read_pos[0] else 0
            result = _read_segment(self.directory / segment_name(seq), start, self._sizes[seq])
            backlog += len(result.frames)
        return backlog

    def start(self) -> None:
        """Start the writer task that delivers the outbox to the database."""
        if not self._opened:
            raise OutboxError("open() the outbox before start()")
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(
                self._run_writer(), name="cdr-outbox-writer"
            )

    async def close(self, flush_timeout_s: float = 5.0) -> bool:
        """Stop taking CDRs, give the writer `flush_timeout_s` to deliver what
        is on disk, then stop it. True when nothing is left unsent."""
        if not self._opened:
            return True
        self._accepting = False
        self._hurry.set()
        while self._fallbacks:
            await asyncio.gather(*self._fallbacks, return_exceptions=True)
        if self._writer is not None:
            try:
                async with asyncio.timeout(flush_timeout_s):
                    await self.wait_idle()
            except TimeoutError:
                pass
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        # Seal the live segment (nothing is appended to it any more) and let
        # the sync thread finish: every record is fdatasync'd when it returns.
        self._seal()
        if self._syncer is not None:
            await asyncio.to_thread(self._syncer.stop)
        self._live_seq = None
        if self.caught_up():
            # Everything is in the database: move the cursor past the last
            # segment so it can go.
            last = max(self._sizes, default=None)
            if last is not None:
                await self._mark_sent((last + 1, 0))
        left = not self.caught_up()
        if left:
            log.warning(
                "CDR outbox %s: %d CDR(s) not yet in %s stay on disk for the next start",
                self.directory,
                self.unsent_estimate(),
                self._database,
            )
        else:
            log.info("CDR outbox %s: everything delivered", self.directory)
        self._release()
        self._opened = False
        return not left

    def _release(self) -> None:
        if self._syncer is not None:
            self._syncer.stop()
            self._syncer = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        if self._drain_io is not None:
            self._drain_io.shutdown(wait=True)
            self._drain_io = None

    async def __aenter__(self) -> CdrOutbox:
        await self.open()
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- appending --------------------------------------------------------------

    def write(self, cdr: CdrRecord) -> None:
        """The executor's `CdrSink`: takes the CDR at once, on the event loop.

        When this returns the record is in the segment, so a controller
        killed now loses nothing (the kernel holds it); the sync thread
        fdatasyncs it moments later, so a power cut can lose only what was
        appended since its last pass. No task, future or thread hop per CDR:
        measured, those cost more than the write itself. If the disk refuses
        the record it goes straight to the database, or whole into the log.
        """
        try:
            self._append_now(cdr, notify=False)
        except OSError as exc:
            task = asyncio.get_running_loop().create_task(self._append_failed(cdr, exc))
            self._fallbacks.add(task)
            task.add_done_callback(self._fallback_done)

    async def append(self, cdr: CdrRecord) -> None:
        """`write`, then wait until the record is fdatasync'd (tools, tests)."""
        started = time.perf_counter()
        try:
            seq, end = self._append_now(cdr, notify=True)
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._sync_waiters.append((seq, end, done))
            await done
        except OSError as exc:
            await self._append_failed(cdr, exc)
            return
        if self.keep_latencies:
            self.stats.append_seconds.append(time.perf_counter() - started)

    def _append_now(self, cdr: CdrRecord, *, notify: bool) -> tuple[int, int]:
        if not self._accepting or self._syncer is None:
            raise OutboxClosed(f"the CDR outbox {self.directory} is closed")
        fd, seq, end = self._write_line(line := frame(encode_cdr(cdr)))
        self._fresh.append((seq, end - len(line), end, cdr))
        if len(self._fresh) > self.fresh_max:
            self._fresh.popleft()
        self._syncer.dirty(fd, seq, end, directory=self._dir_unsynced, notify=notify)
        self._dir_unsynced = False
        self._live_seq = seq
        self._sizes[seq] = end
        self.stats.appended += 1
        if self.unsent_estimate() >= self.batch_size:
            self._hurry.set()
        self._wakeup.set()
        return seq, end

    def _write_line(self, data: bytes) -> tuple[int, int, int]:
        """Append `data` to the live segment (a new one when it is full):
        its fd, number and new size. A write to the page cache takes
        microseconds, so it runs on the loop."""
        if self._fd is None or self._fd_size >= self.max_segment_bytes:
            self._new_segment()
        fd = self._fd
        assert fd is not None
        start = self._fd_size
        try:
            _write_all(fd, data)
        except OSError:
            # Take the partial write back if the disk lets us, and seal the
            # segment either way; the next append starts a new one.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            self._seal()
            raise
        self._fd_size = start + len(data)
        return fd, self._fd_seq, self._fd_size

    def _new_segment(self) -> None:
        self._seal()
        while True:
            seq = self._next_seq
            self._next_seq += 1
            try:
                fd = os.open(
                    self.directory / segment_name(seq),
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                    0o600,
                )
            except FileExistsError:
                continue
            break
        # The new name must survive a power cut too: the sync thread fsyncs
        # the directory with the segment's first records.
        self._dir_unsynced = True
        self._fd, self._fd_seq, self._fd_size = fd, seq, 0

    def _seal(self) -> None:
        """No more appends to the live segment; the sync thread closes it
        after its last fdatasync."""
        if self._fd is not None:
            assert self._syncer is not None
            self._syncer.retire(self._fd)
            self._fd = None

    def _synced(self, done: list[_Synced]) -> None:
        """On the loop: the sync thread's report of a pass someone waits for,
        or of a failure."""
        for synced in done:
            if synced.error is None:
                continue
            # After a failed fdatasync the page cache cannot be trusted
            # (PostgreSQL's "fsyncgate"): seal the segment, later CDRs go to a
            # new one. Its records are still delivered from what the kernel
            # holds, but a power cut before that may lose them.
            self.stats.sync_failures += 1
            log.error(
                "CDR outbox %s: fdatasync of %s failed (%s); its records up to byte %d"
                " may not survive a power cut until delivered; appends go to a new segment",
                self.directory,
                segment_name(synced.seq),
                synced.error,
                synced.size,
            )
            if self._fd is not None and self._fd_seq == synced.seq:
                self._seal()
        waiting = []
        for seq, end, future in self._sync_waiters:
            covering = next((d for d in done if d.seq == seq and d.size >= end), None)
            if covering is None:
                waiting.append((seq, end, future))
            elif not future.done():
                if covering.error is None:
                    future.set_result(None)
                else:
                    future.set_exception(covering.error)
        self._sync_waiters = waiting

    def _fallback_done(self, task: asyncio.Task[None]) -> None:
        self._fallbacks.discard(task)
        if not task.cancelled():
            task.exception()  # logged by _append_failed already
        self._notify()  # wait_idle: one fewer record under way

    async def _append_failed(self, cdr: CdrRecord, exc: OSError) -> None:
        """The disk refused the record: try the database directly, or log it whole."""
        log.error("CDR outbox %s: cannot store CDR %s: %s", self.directory, cdr.call_id, exc)
        try:
            async with asyncio.timeout(self.write_timeout_s):
                await self.sink.write_many([cdr])
        except Exception as db_exc:
            # The last copy: an operator can replay it from the log.
            log.error(
                "CDR %s is in neither the outbox nor %s (%s); its record: %s",
                cdr.call_id,
                self._database,
                self._describe(db_exc),
                encode_cdr(cdr).decode("ascii"),
            )
            raise exc from None
        log.warning("CDR %s was written straight to %s", cdr.call_id, self._database)

    # -- delivering -------------------------------------------------------------

    def caught_up(self) -> bool:
        """Everything appended so far is committed to the database."""
        if self._fallbacks:
            return False
        if not self._sizes:
            return True
        last = max(self._sizes)
        sent = self._sent_pos or (0, 0)
        return sent >= (last, self._sizes[last])

    def unsent_estimate(self) -> int:
        """Records not yet committed (backlog found on start counted in)."""
        return max(
            self.stats.backlog_at_open
            + self.stats.appended
            - self.stats.delivered
            - self.stats.rejected,
            0,
        )

    async def wait_idle(self) -> None:
        """Until everything appended so far is in the database (no timeout here)."""
        while not self.caught_up():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _run_writer(self) -> None:
        failures = 0
        while True:
            self._wakeup.clear()
            try:
                read = await self._drain_step()
                failures = 0
            except _RetryLater:
                # The database failed and the backoff has passed: read the
                # batch again, fuller now if CDRs kept coming meanwhile.
                continue
            except Exception:
                # A bug, or the disk: keep the records, say so, try again.
                failures += 1
                log.exception("CDR outbox %s: delivery step failed", self.directory)
                await asyncio.sleep(self._backoff(failures))
                continue
            if read is None:
                await self._wakeup.wait()
                await self._linger()
            elif 0 < read < self.batch_size:
                # Caught up with what was on disk; what came meanwhile is a
                # record or two. Let more join them rather than chase them one
                # upsert each (measured at 25 CDRs/s: 16 upserts for 300 CDRs,
                # several of one record, without this; 13 of 24-25 with it).
                await self._linger()

    async def _linger(self) -> None:
        """Let more CDRs reach the disk for `linger_s`, so that one upsert and
        one cursor fsync take them all (the CDRs are durable already: this only
        delays the database). Not when closing, nor once a full batch waits."""
        if self.linger_s <= 0 or not self._accepting or self.unsent_estimate() >= self.batch_size:
            return
        self._hurry.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.linger_s):
                await self._hurry.wait()

    def _next_segment(self, seq: int) -> int | None:
        later = [s for s in self._sizes if s >= seq]
        return min(later) if later else None

    async def _drain_step(self) -> int | None:
        """Deliver one batch from the read position. Returns how many records
        it read (0: it moved on to the next segment), None when there is
        nothing to do."""
        seq, offset = self._read_pos
        while self._fresh and self._fresh[0][:2] < (seq, offset):
            self._fresh.popleft()  # delivered from disk already
        if self._fresh and self._fresh[0][:2] == (seq, offset):
            return await self._deliver_fresh()
        current = self._next_segment(seq)
        if current is None:
            return None
        if current != seq:
            seq, offset = current, 0
        limit = self._sizes[seq]
        sealed = seq != self._live_seq
        path = self.directory / segment_name(seq)
        result: _Read = await self._on_drain_thread(
            _read_segment, path, offset, limit, self.batch_size
        )
        records: list[CdrRecord] = []
        bad: list[dict[str, Any]] = []
        for f in result.frames:
            if f.payload is None:
                bad.append(_rejection(seq, f, f.problem or "corrupt"))
                continue
            try:
                cdr = decode_cdr(f.payload)
            except OutboxRecordError as exc:
                bad.append(_rejection(seq, f, str(exc)))
                continue
            problem = _key_problem(cdr)
            if problem is not None:
                bad.append(_rejection(seq, f, problem))
                continue
            records.append(cdr)
        await self._deliver_batch(seq, records, bad)
        if result.torn:
            self.stats.torn_bytes += result.torn
            log.warning(
                "CDR outbox: %s ends in an incomplete record of %d bytes (a crash during"
                " an append that never returned); skipped",
                path.name,
                result.torn,
            )
        next_pos = (seq, result.next_offset)
        if result.at_end and sealed:
            next_pos = (seq + 1, 0)
        if next_pos == self._read_pos:
            return None
        self._read_pos = next_pos
        await self._mark_sent(next_pos)
        return len(result.frames)

    async def _deliver_fresh(self) -> int:
        """One batch from `_fresh`: the records as appended, one segment at a
        time (the disk path moves the read position to the next segment)."""
        seq = self._fresh[0][0]
        taken = 0
        end = 0
        records: list[CdrRecord] = []
        bad: list[dict[str, Any]] = []
        while self._fresh and taken < self.batch_size and self._fresh[0][0] == seq:
            _, _, end, cdr = self._fresh.popleft()
            taken += 1
            problem = _key_problem(cdr)
            if problem is None:
                records.append(cdr)
            else:
                bad.append({"reason": problem, "segment": seq, "cdr": cdr_to_dict(cdr)})
        # If this raises (the database is down), the read position stays: the
        # retry reads these records from disk, as they have left _fresh.
        await self._deliver_batch(seq, records, bad)
        self._read_pos = (seq, end)
        await self._mark_sent(self._read_pos)
        return taken

    async def _deliver_batch(
        self, seq: int, records: list[CdrRecord], bad: list[dict[str, Any]]
    ) -> None:
        """Upsert `records` of segment `seq`; those the database refuses for
        good join `bad`, and `bad` goes to rejected.log."""
        if records:
            refused = await self._deliver(records)
            self.stats.delivered += len(records) - len(refused)
            bad += [
                {"reason": f"database refused: {reason}", "segment": seq, "cdr": cdr_to_dict(cdr)}
                for cdr, reason in refused
            ]
        if bad:
            await self._reject(bad)

    async def _mark_sent(self, pos: tuple[int, int]) -> None:
        if pos != self._sent_pos:
            await self._on_drain_thread(self._write_cursor_sync, pos)
            self._sent_pos = pos
        gone = [s for s in self._sizes if s < pos[0] and s != self._live_seq]
        for seq in gone:
            del self._sizes[seq]
        if gone:
            await self._on_drain_thread(self._unlink_sync, gone)
        self._notify()

    def _write_cursor_sync(self, pos: tuple[int, int]) -> None:
        tmp = self.directory / (CURSOR_NAME + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, _encode_cursor(*pos))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.directory / CURSOR_NAME)

    def _unlink_sync(self, seqs: Iterable[int]) -> None:
        for seq in seqs:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / segment_name(seq))

    async def _reject(self, entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            log.error(
                "CDR outbox: %s record at %s moved to %s: %s",
                segment_name(entry["segment"]),
                entry.get("offset", "?"),
                REJECTED_NAME,
                entry["reason"],
            )
        data = b"".join(
            frame(json.dumps(e, separators=(",", ":"), ensure_ascii=True).encode("ascii"))
            for e in entries
        )
        await self._on_drain_thread(self._append_rejected_sync, data)
        self.stats.rejected += len(entries)

    def _append_rejected_sync(self, data: bytes) -> None:
        path = self.directory / REJECTED_NAME
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, data)
            _datasync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self.directory)

    async def _deliver(self, records: list[CdrRecord]) -> list[tuple[CdrRecord, str]]:
        """Upsert `records`. Returns the ones the database refused for good
        (each tried alone), with the reason. On any other failure: wait the
        backoff, then raise _RetryLater (nothing is marked sent)."""
        try:
            async with asyncio.timeout(self.write_timeout_s):
                await self.sink.write_many(_unique(records))
        except Exception as exc:
            if is_permanent_database_error(exc):
                if len(records) == 1:
                    return [(records[0], self._describe(exc))]
                refused: list[tuple[CdrRecord, str]] = []
                for cdr in records:
                    refused.extend(await self._deliver([cdr]))
                return refused
            self._failures += 1
            delay = self._backoff(self._failures)
            self._database_down(exc, delay)
            await asyncio.sleep(delay)
            raise _RetryLater from None
        self._failures = 0
        self._database_up()
        return []

    def _backoff(self, attempt: int) -> float:
        return backoff_s(attempt - 1, self.retry_initial_s, self.retry_max_s)

    def _database_down(self, exc: BaseException, delay: float) -> None:
        now = time.monotonic()
        self.stats.database_failures += 1
        self.stats.last_error = self._describe(exc)
        if self._down_since is None:
            self._down_since = self._last_outage_log = now
            log.warning(
                "CDR outbox: cannot write to %s (%s); %d CDR(s) wait in %s, retrying in %.1fs",
                self._database,
                self.stats.last_error,
                self.unsent_estimate(),
                self.directory,
                delay,
            )
        elif now - self._last_outage_log >= self.outage_log_every_s:
            self._last_outage_log = now
            log.warning(
                "CDR outbox: %s still unavailable after %.0fs (%s); %d CDR(s) wait",
                self._database,
                now - self._down_since,
                self.stats.last_error,
                self.unsent_estimate(),
            )
        else:
            log.debug("CDR outbox: retry in %.1fs after %s", delay, self.stats.last_error)

    def _database_up(self) -> None:
        if self._down_since is not None:
            log.warning(
                "CDR outbox: %s is back after %.1fs; delivering %d waiting CDR(s)",
                self._database,
                time.monotonic() - self._down_since,
                self.unsent_estimate(),
            )
            self._down_since = None

    def _describe(self, exc: BaseException) -> str:
        return describe_database_error(exc, self._url)

    # -- threads ----------------------------------------------------------------

    async def _on_drain_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._drain_io is None:
            raise OutboxClosed(f"the CDR outbox {self.directory} is closed")
        return await asyncio.get_running_loop().run_in_executor(self._drain_io, fn, *args)


def _key_problem(cdr: CdrRecord) -> str | None:
    """Why the record cannot be upserted at all (its key), or None. A bad
    key would fail every batch it is in and block the queue behind it."""
    try:
        uuid.UUID(cdr.call_id)
    except ValueError:
        return f"call id {cdr.call_id!r} is not a UUID"
    return None


def _unique(records: list[CdrRecord]) -> list[CdrRecord]:
    """First record per call id (first write wins, as in the upsert)."""
    seen: set[str] = set()
    out = []
    for cdr in records:
        if cdr.call_id not in seen:
            seen.add(cdr.call_id)
            out.append(cdr)
    return out


def _rejection(seq: int, f: Frame, reason: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"reason": reason, "segment": seq, "offset": f.offset}
    if f.payload is not None:
        entry["payload"] = f.payload.decode("ascii", errors="replace")
    else:
        entry["raw_b64"] = base64.b64encode(f.raw).decode("ascii")
    return entry


def describe_database_error(exc: BaseException, url: str | None = None) -> str:
    """One line about a database error, for logs and the CLI: the driver's
    message without SQL, parameters or the password of `url`."""
    inner = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(inner).strip().splitlines()
    first = lines[0][:300] if lines else ""
    secret = None
    if url:
        with contextlib.suppress(ArgumentError):
            secret = make_url(url).password
    if secret:
        first = first.replace(str(secret), "***")
    name = type(inner).__name__
    return f"{name}: {first}" if first else name
