"""Where recordings live on disk, and how they get there safely.

Layout, under one base directory (today `settings.data_dir / "recordings"`)::

    <base>/<tenant>/<yyyy>/<mm>/<call-uuid>.<ext>      ext: wav, mp3, opus

- `yyyy/mm` is the **UTC** year and month of the instant the recording
  started. Not the tenant's local month: UTC never repeats or skips an hour,
  a tenant that changes time zone does not move its files, and it matches the
  database, which stores every instant in UTC. (`pbxctl recordings list
  --date` is a UTC day for the same reason, like `pbxctl cdr reconcile`.)
- The database stores the path *relative to the base* (`acme/2026/03/<uuid>.wav`),
  so the base can move without rewriting rows.
- Names are built only from validated parts: a tenant id matching the
  configuration's id pattern, a call id parsed as a UUID and written in its
  canonical form, a known extension. A relative path read back from the
  database is checked against the same shape and must resolve inside the
  base, so a tampered row cannot make `purge` or `export` touch another file.
- Files are written atomically: a temporary file in the target directory
  (created 0600), fsync'd, chmod'ed to 0640, renamed over the final name, and
  the directory fsync'd. A reader sees the old file or the whole new one,
  never a torn one, and a crash leaves at most a `.tmp-*` file behind.
- Modes are set with explicit chmod, so the process umask does not matter:
  files 0640, directories this module creates 0750 (recordings are personal
  data; the group is for the ops account that exports them).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal, get_args

log = logging.getLogger(__name__)

AudioFormat = Literal["wav", "mp3", "opus"]
AUDIO_FORMATS: tuple[AudioFormat, ...] = get_args(AudioFormat)

FILE_MODE = 0o640
DIR_MODE = 0o750
TEMP_PREFIX = ".tmp-"

# The configuration's tenant id pattern (configfile._ID): a slug that can be a
# path component as it is. It cannot be "." or "..", and holds no separator.
_TENANT_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_RELATIVE = re.compile(
    rf"(?P<tenant>[a-z0-9][a-z0-9._-]{{0,62}})/(?P<year>\d{{4}})/(?P<month>0[1-9]|1[0-2])/"
    rf"(?P<call>{_UUID})\.(?P<ext>{'|'.join(AUDIO_FORMATS)})"
)
_CHUNK = 1 << 20


class UnsafePath(ValueError):
    """A tenant id, call id or stored path that would not stay a plain file
    under the recordings directory."""


def validate_tenant_id(tenant_id: str) -> str:
    if not isinstance(tenant_id, str) or not _TENANT_ID.fullmatch(tenant_id):
        raise UnsafePath(f"not a tenant id: {tenant_id!r}")
    return tenant_id


def validate_call_id(call_id: uuid.UUID | str) -> uuid.UUID:
    """The call id as a UUID; any string that is not one is refused."""
    if isinstance(call_id, uuid.UUID):
        return call_id
    if not isinstance(call_id, str) or not re.fullmatch(_UUID, call_id.lower()):
        raise UnsafePath(f"not a call id (a UUID): {call_id!r}")
    return uuid.UUID(call_id)


def validate_format(fmt: str) -> AudioFormat:
    for known in AUDIO_FORMATS:
        if fmt == known:
            return known
    raise UnsafePath(f"not a recording format: {fmt!r} (one of {', '.join(AUDIO_FORMATS)})")


@dataclass(frozen=True, slots=True)
class StoredPath:
    """A recording's place: `relative` is what the database keeps."""

    tenant_id: str
    call_id: uuid.UUID
    format: AudioFormat
    relative: str  # posix, relative to the recordings base
    absolute: Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RecordingStorage:
    """The recordings directory: path building, atomic writes, removal.

    Blocking file IO throughout: call it from a worker thread
    (`asyncio.to_thread`) when on the event loop.
    """

    def __init__(self, base: Path) -> None:
        self.base = Path(base)

    # -- paths ---------------------------------------------------------------

    def path_for(
        self,
        tenant_id: str,
        call_id: uuid.UUID | str,
        started_at: dt.datetime,
        fmt: str,
    ) -> StoredPath:
        """Where the recording of `call_id` in `fmt` goes: the UTC year and
        month of `started_at` (an aware datetime)."""
        tenant = validate_tenant_id(tenant_id)
        call = validate_call_id(call_id)
        audio_format = validate_format(fmt)
        if started_at.tzinfo is None or started_at.utcoffset() is None:
            raise ValueError("started_at must be timezone-aware")
        utc = started_at.astimezone(dt.UTC)
        relative = f"{tenant}/{utc.year:04d}/{utc.month:02d}/{call}.{audio_format}"
        return StoredPath(tenant, call, audio_format, relative, self._inside(relative))

    def resolve(self, relative: str) -> StoredPath:
        """A path read back from the database, checked before any use."""
        match = _RELATIVE.fullmatch(relative) if isinstance(relative, str) else None
        if match is None:
            raise UnsafePath(f"not a recording path: {relative!r}")
        return StoredPath(
            match["tenant"],
            uuid.UUID(match["call"]),
            validate_format(match["ext"]),
            relative,
            self._inside(relative),
        )

    def _inside(self, relative: str) -> Path:
        candidate = self.base / relative
        base = self.base.resolve()
        # resolve() follows symlinks already on disk: a tenant directory
        # linked elsewhere is refused rather than written through.
        if not candidate.resolve().is_relative_to(base):
            raise UnsafePath(f"{relative!r} leaves the recordings directory")
        return candidate

    # -- writing -------------------------------------------------------------

    def ensure_dir(self, stored: StoredPath) -> Path:
        """Create the base and the tenant/year/month directories, 0750 each."""
        parts = PurePosixPath(stored.relative).parts[:-1]
        directory = self.base
        if not directory.is_dir():
            # Its parents (the data directory) with the default mode; the
            # recordings base itself 0750.
            directory.parent.mkdir(parents=True, exist_ok=True)
            self._mkdir(directory)
        for part in parts:
            directory = directory / part
            self._mkdir(directory)
        return directory

    @staticmethod
    def _mkdir(directory: Path) -> None:
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            if not directory.is_dir():
                raise UnsafePath(f"{directory} exists and is not a directory") from None
            return
        os.chmod(directory, DIR_MODE)  # mkdir's mode is filtered by the umask
        _fsync_dir(directory.parent)

    @contextlib.contextmanager
    def atomic_path(self, stored: StoredPath) -> Iterator[Path]:
        """A temporary file (0600) beside `stored`, for a writer that wants a
        path (ffmpeg). On a clean exit it becomes `stored` atomically; on an
        exception it is removed."""
        directory = self.ensure_dir(stored)
        fd, temp_name = tempfile.mkstemp(
            prefix=f"{TEMP_PREFIX}{stored.call_id}.", suffix=f".{stored.format}", dir=directory
        )
        os.close(fd)
        temp = Path(temp_name)
        try:
            yield temp
            self._commit(temp, stored.absolute)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise

    @contextlib.contextmanager
    def atomic_writer(self, stored: StoredPath) -> Iterator[BinaryIO]:
        """A binary file object on a temporary file beside `stored`; see
        `atomic_path`."""
        with self.atomic_path(stored) as temp, open(temp, "r+b") as fh:
            yield fh
            fh.flush()

    def write_bytes(self, stored: StoredPath, data: bytes) -> None:
        with self.atomic_writer(stored) as fh:
            fh.write(data)

    def write_with(self, stored: StoredPath, produce: Callable[[Path], None]) -> None:
        """`produce(temp_path)` writes the file's content; then it is committed."""
        with self.atomic_path(stored) as temp:
            produce(temp)

    @staticmethod
    def _commit(temp: Path, final: Path) -> None:
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fchmod(fd, FILE_MODE)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, final)
        _fsync_dir(final.parent)

    # -- removal -------------------------------------------------------------

    def remove(self, stored: StoredPath) -> bool:
        """Delete the file; False when it was already gone."""
        try:
            stored.absolute.unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(stored.absolute.parent)
        return True


__all__ = [
    "AUDIO_FORMATS",
    "DIR_MODE",
    "FILE_MODE",
    "AudioFormat",
    "RecordingStorage",
    "StoredPath",
    "UnsafePath",
    "sha256_file",
    "validate_call_id",
    "validate_format",
    "validate_tenant_id",
]
