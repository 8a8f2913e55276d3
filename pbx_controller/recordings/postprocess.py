"""Turn the legs Asterisk recorded into the stored recording.

Input: the per-leg WAV files Asterisk wrote (one snoop recording per leg:
what the caller said, what the agent said), each with the offset at which
its recording started on the call's *recording timeline* (milliseconds since
the recording was started, the engine's clock), the paused spans (PCI pause)
on the same timeline, and optionally the instant consent was withdrawn.

Output, in `RecordingStorage`'s layout:

- `<call>.wav`: stereo, caller left, agent right, 16-bit PCM at the legs'
  rate (8 kHz for Asterisk's `wav`). Always written.
- `<call>.mp3` / `<call>.opus` when the tenant wants them and ffmpeg is
  installed (otherwise they are skipped with a warning, and said so in the
  result).

and, per file, its duration and sha256. The raw leg files are removed after
success: they are consent-gated personal data too.

The timeline, measured on Asterisk 22.10 (tests/integration/test_recording_capture.py):
a paused live recording writes **nothing** while paused, so a leg file is
shorter than the wall-clock time by exactly the paused time (to the 20 ms
frame). This module puts the silence back: each leg's audio is laid out on
the timeline from its start offset, a paused span becomes digital silence of
the span's length, and the finished timeline is zeroed over every paused
span once more (whatever `paused_audio` says), so the stored file is silent
wherever card data may have been spoken and its length is the call's.

Everything here is blocking (pydub, ffmpeg, fsync): `postprocess_async` and
`Postprocessor` run it in a worker thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
import subprocess
import tempfile
import uuid
import warnings
import wave
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pbx_controller.recordings.storage import (
    AudioFormat,
    RecordingStorage,
    StoredPath,
    sha256_file,
    validate_call_id,
    validate_format,
    validate_tenant_id,
)

with warnings.catch_warnings():
    # pydub 0.25.1 imports the stdlib `audioop` (deprecated since 3.11;
    # `audioop-lts` replaces it on 3.13), has invalid escapes in utils.py
    # (a warning when compiled without a cached .pyc), and warns at import
    # when ffmpeg is missing (handled here: extra formats are skipped). Under
    # pytest's filterwarnings=error any of them would fail the import.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", SyntaxWarning)
    warnings.filterwarnings("ignore", "Couldn't find ff", RuntimeWarning)
    from pydub import AudioSegment  # type: ignore[import-untyped,unused-ignore]

log = logging.getLogger(__name__)

Span = tuple[int, int]  # (start_ms, end_ms) on the recording timeline, end exclusive
PausedAudio = Literal["dropped", "kept"]

# What Asterisk 22 does with a paused live recording (measured): the paused
# frames are not written.
ASTERISK_PAUSED_AUDIO: PausedAudio = "dropped"

SAMPLE_WIDTH = 2  # 16-bit PCM out, whatever came in
FFMPEG_TIMEOUT_S = 600.0
# Per format: ffmpeg encoder, muxer, options. Voice at 8 kHz stereo.
_ENCODERS: dict[str, tuple[str, ...]] = {
    "mp3": ("-c:a", "libmp3lame", "-b:a", "32k", "-f", "mp3"),
    "opus": ("-c:a", "libopus", "-b:a", "24k", "-application", "voip", "-f", "opus"),
}


class PostprocessError(RuntimeError):
    """The legs could not be turned into a recording; the legs are kept."""


class NoLegAudio(PostprocessError):
    """Neither leg file exists (and no earlier run's output either)."""


@dataclass(frozen=True, slots=True)
class Leg:
    """One leg's recording. `path` None or a missing file: a silent channel.
    `start_ms`: where the leg's recording started on the timeline.
    `paused`: this leg's own paused spans, when they differ from the call's
    (each leg's pause request lands a few ms apart); None: the job's spans."""

    path: Path | None
    start_ms: int = 0
    paused: tuple[Span, ...] | None = None

    def __post_init__(self) -> None:
        if self.start_ms < 0:
            raise ValueError(f"start_ms must be >= 0, got {self.start_ms}")
        if self.paused is not None:
            _check_spans(self.paused)


@dataclass(frozen=True, slots=True)
class PostprocessJob:
    tenant_id: str
    call_id: uuid.UUID
    started_at: dt.datetime  # the timeline's 0; decides the yyyy/mm directory
    caller: Leg  # left channel
    agent: Leg  # right channel
    paused: tuple[Span, ...] = ()
    # Spans silenced in place (DTMF tones): unlike paused spans, Asterisk
    # wrote them, so nothing is inserted; they are only zeroed.
    masked: tuple[Span, ...] = ()
    # Consent withdrawn (policy "trim"): keep the audio before this instant only.
    trim_at_ms: int | None = None
    # Besides the WAV, which is always written.
    formats: tuple[AudioFormat, ...] = ()
    paused_audio: PausedAudio = ASTERISK_PAUSED_AUDIO
    remove_legs: bool = True

    def __post_init__(self) -> None:
        validate_tenant_id(self.tenant_id)
        object.__setattr__(self, "call_id", validate_call_id(self.call_id))
        if self.started_at.tzinfo is None or self.started_at.utcoffset() is None:
            raise ValueError("started_at must be timezone-aware")
        _check_spans(self.paused)
        _check_spans(self.masked)
        if self.trim_at_ms is not None and self.trim_at_ms < 0:
            raise ValueError(f"trim_at_ms must be >= 0, got {self.trim_at_ms}")
        formats = tuple(validate_format(f) for f in self.formats)
        if "wav" in formats:
            raise ValueError("the WAV is always written; formats lists the extra ones")
        object.__setattr__(self, "formats", tuple(dict.fromkeys(formats)))
        if self.paused_audio not in ("dropped", "kept"):
            raise ValueError(f"paused_audio must be 'dropped' or 'kept', not {self.paused_audio!r}")


@dataclass(frozen=True, slots=True)
class RecordingFile:
    format: AudioFormat
    relative: str  # what the database stores
    path: Path
    duration_ms: int
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class PostprocessResult:
    # The WAV first. Empty when nothing was left to keep (withdrawn at 0 ms,
    # or no audio at all): the recording should then be erased.
    files: tuple[RecordingFile, ...]
    skipped_formats: tuple[AudioFormat, ...]  # wanted, but ffmpeg is missing
    legs_removed: bool

    @property
    def wav(self) -> RecordingFile | None:
        return self.files[0] if self.files else None


# -- the work ------------------------------------------------------------------


def find_ffmpeg() -> str | None:
    return shutil.which("ffmpeg")


def postprocess(
    job: PostprocessJob,
    storage: RecordingStorage,
    *,
    ffmpeg: str | Literal["auto"] | None = "auto",
) -> PostprocessResult:
    """Blocking: merge, write, convert, describe, then remove the legs."""
    ffmpeg_bin = find_ffmpeg() if ffmpeg == "auto" else ffmpeg
    wav = storage.path_for(job.tenant_id, job.call_id, job.started_at, "wav")
    if job.trim_at_ms == 0:  # withdrawn before anything was said, or policy "delete"
        return _keep_nothing(job, storage)
    legs = [(job.caller, _load(job.caller.path)), (job.agent, _load(job.agent.path))]
    if all(pcm is None for _, pcm in legs):
        if not wav.absolute.exists():
            raise NoLegAudio(f"call {job.call_id}: no leg file and no earlier output")
        # An earlier run wrote the WAV and removed the legs, then stopped
        # before its result was stored: describe what is there.
        log.info("call %s: legs already processed; reusing %s", job.call_id, wav.relative)
    else:
        rate = max(pcm.rate for _, pcm in legs if pcm is not None)
        tracks = [_timeline(pcm.resampled(rate) if pcm else None, leg, job) for leg, pcm in legs]
        length = max(len(t) for t in tracks) // SAMPLE_WIDTH
        if job.trim_at_ms is not None:
            length = min(length, _frames(job.trim_at_ms, rate))
        if length == 0:
            return _keep_nothing(job, storage)
        spans = _merge(
            job.paused + job.masked + tuple(s for leg, _ in legs for s in leg.paused or ())
        )
        left, right = (_finish(t, length, spans, rate) for t in tracks)
        _write_wav(storage, wav, left, right, rate)

    files = [_describe(wav, _wav_duration_ms(wav.absolute))]
    skipped: list[AudioFormat] = []
    for fmt in job.formats:
        target = storage.path_for(job.tenant_id, job.call_id, job.started_at, fmt)
        if ffmpeg_bin is None:
            log.warning("call %s: no ffmpeg, %s not written (WAV only)", job.call_id, fmt)
            skipped.append(fmt)
            continue
        _convert(storage, ffmpeg_bin, wav.absolute, target)
        files.append(_describe(target, _decoded_duration_ms(ffmpeg_bin, target.absolute)))
    return PostprocessResult(tuple(files), tuple(skipped), _remove_legs(job))


def _keep_nothing(job: PostprocessJob, storage: RecordingStorage) -> PostprocessResult:
    """No audio to keep: remove the legs and any earlier output."""
    log.info("call %s: nothing to keep (no audio before the cut)", job.call_id)
    for fmt in ("wav", *job.formats):
        storage.remove(storage.path_for(job.tenant_id, job.call_id, job.started_at, fmt))
    return PostprocessResult((), (), _remove_legs(job))


async def postprocess_async(
    job: PostprocessJob,
    storage: RecordingStorage,
    *,
    ffmpeg: str | Literal["auto"] | None = "auto",
) -> PostprocessResult:
    """`postprocess` in a worker thread (pydub and ffmpeg block). A cancelled
    await does not stop the thread: the files still get written."""
    return await asyncio.to_thread(postprocess, job, storage, ffmpeg=ffmpeg)


class Postprocessor:
    """The service's post-processing port: at most `max_concurrent` jobs at
    once (a one-hour call holds ~0.5 GB of PCM while it is merged)."""

    def __init__(
        self,
        storage: RecordingStorage,
        *,
        ffmpeg: str | Literal["auto"] | None = "auto",
        max_concurrent: int = 2,
    ) -> None:
        self.storage = storage
        self.ffmpeg = find_ffmpeg() if ffmpeg == "auto" else ffmpeg
        self._limit = asyncio.Semaphore(max_concurrent)

    async def run(self, job: PostprocessJob) -> PostprocessResult:
        async with self._limit:
            return await postprocess_async(job, self.storage, ffmpeg=self.ffmpeg)


# -- audio ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Pcm:
    """Mono 16-bit little-endian PCM."""

    data: bytes
    rate: int

    def resampled(self, rate: int) -> _Pcm:
        if rate == self.rate:
            return self
        segment = _segment(self.data, self.rate).set_frame_rate(rate)
        return _Pcm(segment.raw_data, rate)


def _segment(data: bytes, rate: int, channels: int = 1) -> Any:
    return AudioSegment(data=data, sample_width=SAMPLE_WIDTH, frame_rate=rate, channels=channels)


def _load(path: Path | None) -> _Pcm | None:
    if path is None:
        return None
    if not path.exists():
        log.warning("leg recording %s is missing: that channel stays silent", path)
        return None
    try:
        # A file object, not the path: given a path, pydub leaves it open.
        with open(path, "rb") as fh:
            segment = AudioSegment.from_file(fh, format="wav")
    except Exception as exc:  # pydub raises bare exceptions of several kinds
        raise PostprocessError(f"cannot read leg recording {path}: {exc}") from exc
    segment = segment.set_channels(1).set_sample_width(SAMPLE_WIDTH)
    return _Pcm(segment.raw_data, segment.frame_rate)


def _frames(ms: int, rate: int) -> int:
    return ms * rate // 1000


def _timeline(pcm: _Pcm | None, leg: Leg, job: PostprocessJob) -> bytearray:
    """The leg laid out on the recording timeline (bytes of mono PCM)."""
    out = bytearray()
    if pcm is None:
        return out
    rate, audio = pcm.rate, pcm.data
    out += bytes(_frames(leg.start_ms, rate) * SAMPLE_WIDTH)
    if job.paused_audio == "kept":
        out += audio
        return out
    # "dropped": the file holds only unpaused audio; put the gaps back.
    cursor_ms, taken = leg.start_ms, 0  # timeline position, bytes of audio used
    for start, end in _merge(leg.paused if leg.paused is not None else job.paused):
        if end <= cursor_ms:
            continue  # over before this leg's recording started
        if taken >= len(audio):
            break  # the leg ended before this pause: nothing to shift
        start = max(start, cursor_ms)
        chunk = _frames(start, rate) - _frames(cursor_ms, rate)
        out += audio[taken : taken + chunk * SAMPLE_WIDTH]
        taken += chunk * SAMPLE_WIDTH
        out += bytes((_frames(end, rate) - _frames(start, rate)) * SAMPLE_WIDTH)
        cursor_ms = end
    out += audio[taken:]
    return out


def _finish(track: bytearray, frames: int, spans: Iterable[Span], rate: int) -> bytes:
    """Cut or pad to `frames`, then silence every paused span."""
    size = frames * SAMPLE_WIDTH
    del track[size:]
    track += bytes(size - len(track))
    for start, end in spans:
        a = min(_frames(start, rate), frames) * SAMPLE_WIDTH
        b = min(_frames(end, rate), frames) * SAMPLE_WIDTH
        track[a:b] = bytes(b - a)
    return bytes(track)


def _write_wav(
    storage: RecordingStorage, target: StoredPath, left: bytes, right: bytes, rate: int
) -> None:
    stereo = AudioSegment.from_mono_audiosegments(_segment(left, rate), _segment(right, rate))
    with storage.atomic_writer(target) as fh:
        stereo.export(fh, format="wav")


def _wav_duration_ms(path: Path) -> int:
    with wave.open(str(path), "rb") as reader:
        return round(reader.getnframes() * 1000 / reader.getframerate())


def _convert(storage: RecordingStorage, ffmpeg: str, source: Path, target: StoredPath) -> None:
    def produce(temp: Path) -> None:
        # ffmpeg writes the temporary file storage created (0600) in the
        # target directory: no copy of the audio in /tmp, as pydub's export
        # would make. Bit-exact flags: a rerun writes the same bytes.
        command = [
            ffmpeg,
            *("-nostdin", "-hide_banner", "-loglevel", "error", "-y"),
            *("-i", str(source)),
            *("-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact"),
            *_ENCODERS[target.format],
            str(temp),
        ]
        _run(command, f"encode {target.relative}")

    storage.write_with(target, produce)


def _run(command: Sequence[str], what: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PostprocessError(f"ffmpeg could not {what}: {exc}") from exc
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()[-500:]
        raise PostprocessError(f"ffmpeg could not {what} (exit {done.returncode}): {message}")


def _decoded_duration_ms(ffmpeg: str, path: Path, rate: int = 8000) -> int:
    """Decode the whole file and count the samples, in constant memory.
    (The container's own duration is an estimate: an MP3's includes the
    encoder's padding, ~170 ms at 8 kHz.)"""
    command = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path)]
    command += ["-f", "s16le", "-ac", "1", "-ar", str(rate), "-"]
    with tempfile.TemporaryFile() as errors:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors) as process:
            assert process.stdout is not None
            total = 0
            while chunk := process.stdout.read(1 << 16):
                total += len(chunk)
            try:
                returncode = process.wait(timeout=FFMPEG_TIMEOUT_S)
            except subprocess.TimeoutExpired as exc:
                process.kill()
                raise PostprocessError(f"ffmpeg did not finish decoding {path}") from exc
        if returncode != 0:
            errors.seek(0)
            message = errors.read().decode(errors="replace").strip()[-500:]
            raise PostprocessError(f"ffmpeg cannot decode {path}: {message}")
    return round(total / SAMPLE_WIDTH * 1000 / rate)


def _describe(stored: StoredPath, duration_ms: int) -> RecordingFile:
    path = stored.absolute
    return RecordingFile(
        stored.format,
        stored.relative,
        path,
        duration_ms,
        sha256_file(path),
        path.stat().st_size,
    )


def _remove_legs(job: PostprocessJob) -> bool:
    if not job.remove_legs:
        return False
    removed = True
    for leg in (job.caller, job.agent):
        if leg.path is None:
            continue
        try:
            leg.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            # E.g. the spool belongs to the asterisk user: the caller can
            # delete it over ARI (DELETE /recordings/stored/{name}).
            log.warning("could not remove leg recording %s: %s", leg.path, exc)
            removed = False
    return removed


# -- spans ---------------------------------------------------------------------


def _check_spans(spans: Sequence[Span]) -> None:
    for span in spans:
        start, end = span
        if not (0 <= start <= end):
            raise ValueError(f"a paused span must be (start_ms, end_ms), 0 <= start <= end: {span}")


def _merge(spans: Iterable[Span]) -> list[Span]:
    """Sorted, overlapping and touching spans joined."""
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


__all__ = [
    "ASTERISK_PAUSED_AUDIO",
    "Leg",
    "NoLegAudio",
    "PausedAudio",
    "PostprocessError",
    "PostprocessJob",
    "PostprocessResult",
    "Postprocessor",
    "RecordingFile",
    "Span",
    "find_ffmpeg",
    "postprocess",
    "postprocess_async",
]
