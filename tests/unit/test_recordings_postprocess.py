"""Post-processing on real audio generated here: tones written as 8 kHz
16-bit mono WAVs, like the leg files Asterisk writes, merged to stereo and
checked by frequency (Goertzel) and level (RMS) per channel."""

from __future__ import annotations

import array
import asyncio
import datetime as dt
import hashlib
import math
import os
import stat
import subprocess
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbx_controller.recordings.postprocess import (
    Leg,
    NoLegAudio,
    PostprocessError,
    PostprocessJob,
    Postprocessor,
    PostprocessResult,
    find_ffmpeg,
    postprocess,
    postprocess_async,
)
from pbx_controller.recordings.storage import RecordingStorage, UnsafePath

RATE = 8000
CALLER_HZ, AGENT_HZ, AFTER_PAUSE_HZ = 440, 1200, 700
STARTED = dt.datetime(2026, 3, 31, 23, 30, tzinfo=dt.UTC)  # Warsaw: already April


# -- audio helpers -------------------------------------------------------------


def tone(freq: float, ms: int, amplitude: int = 8000) -> array.array[int]:
    n = ms * RATE // 1000
    return array.array(
        "h", (round(amplitude * math.sin(2 * math.pi * freq * i / RATE)) for i in range(n))
    )


def silence(ms: int) -> array.array[int]:
    return array.array("h", bytes(ms * RATE // 1000 * 2))


def write_leg(path: Path, *parts: array.array[int], rate: int = RATE) -> Path:
    samples = array.array("h")
    for part in parts:
        samples.extend(part)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return path


def read_stereo(path: Path) -> tuple[array.array[int], array.array[int], int]:
    with wave.open(str(path), "rb") as reader:
        assert reader.getnchannels() == 2
        assert reader.getsampwidth() == 2
        rate = reader.getframerate()
        frames = array.array("h", reader.readframes(reader.getnframes()))
    return frames[0::2], frames[1::2], rate


def window(samples: array.array[int], start_ms: int, end_ms: int) -> array.array[int]:
    return samples[start_ms * RATE // 1000 : end_ms * RATE // 1000]


def rms(samples: array.array[int]) -> float:
    return math.sqrt(sum(s * s for s in samples) / len(samples)) if samples else 0.0


def goertzel(samples: array.array[int], freq: float, rate: int = RATE) -> float:
    """The amplitude of `freq` in `samples` (numpy-free)."""
    k = 2 * math.cos(2 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + k * s1 - s2, s1
    return 2 * math.sqrt(max(s1 * s1 + s2 * s2 - k * s1 * s2, 0.0)) / len(samples)


def dominant(samples: array.array[int], *candidates: float) -> float:
    return max(candidates, key=lambda f: goertzel(samples, f))


# -- fixtures ------------------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> RecordingStorage:
    return RecordingStorage(tmp_path / "recordings")


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o002)  # permissive: modes must still come out 0640/0750
    try:
        yield
    finally:
        os.umask(old)


def need_ffmpeg() -> str:
    ffmpeg = find_ffmpeg()
    if ffmpeg is None:
        if os.environ.get("CI"):
            pytest.fail("ffmpeg is missing (CI requires it: make setup installs it)")
        pytest.skip("ffmpeg is not installed (under CI this is a failure)")
    return ffmpeg


def job(spool: Path, call_id: uuid.UUID | None = None, **overrides: object) -> PostprocessJob:
    values: dict[str, object] = {
        "tenant_id": "acme",
        "call_id": call_id or uuid.uuid4(),
        "started_at": STARTED,
        "caller": Leg(spool / "caller.wav"),
        "agent": Leg(spool / "agent.wav"),
    }
    values.update(overrides)
    return PostprocessJob(**values)  # type: ignore[arg-type]


# -- placement, alignment, length ------------------------------------------------


def test_caller_left_agent_right_aligned_by_start_offset(
    storage: RecordingStorage, spool: Path, umask: None
) -> None:
    write_leg(spool / "caller.wav", tone(CALLER_HZ, 2000))
    # The agent leg's recording started 300 ms later and is shorter.
    write_leg(spool / "agent.wav", tone(AGENT_HZ, 1200))
    the_job = job(spool, agent=Leg(spool / "agent.wav", start_ms=300))

    result = postprocess(the_job, storage, ffmpeg=None)

    wav = result.wav
    assert wav is not None
    assert wav.format == "wav"
    # UTC year/month of the start, whatever the tenant's zone.
    assert wav.relative == f"acme/2026/03/{the_job.call_id}.wav"
    assert wav.path == storage.base / wav.relative
    left, right, rate = read_stereo(wav.path)
    assert rate == RATE
    assert abs(wav.duration_ms - 2000) <= 20
    assert abs(len(left) * 1000 / RATE - 2000) <= 20

    # Left: the caller's tone only; right: the agent's only.
    body = (400, 1400)
    assert dominant(window(left, *body), CALLER_HZ, AGENT_HZ) == CALLER_HZ
    assert dominant(window(right, *body), CALLER_HZ, AGENT_HZ) == AGENT_HZ
    assert goertzel(window(left, *body), AGENT_HZ) < 10
    assert goertzel(window(right, *body), CALLER_HZ) < 10
    # The agent's channel is silent until its recording started (300 ms)
    # and after its leg ended (300 + 1200 ms), then padded to the caller's end.
    assert rms(window(right, 0, 295)) == 0
    assert rms(window(right, 305, 600)) > 5000
    assert rms(window(right, 1300, 1495)) > 5000
    assert rms(window(right, 1505, 2000)) == 0
    assert rms(window(left, 0, 100)) > 5000

    assert wav.sha256 == hashlib.sha256(wav.path.read_bytes()).hexdigest()
    assert wav.size == wav.path.stat().st_size
    assert result.skipped_formats == ()


def test_modes_are_0640_and_0750_whatever_the_umask(storage: RecordingStorage, spool: Path) -> None:
    write_leg(spool / "caller.wav", tone(CALLER_HZ, 300))
    for mask in (0o077, 0o000):  # 0o077 first: it would make the directories 0700
        old = os.umask(mask)
        try:
            result = postprocess(job(spool, remove_legs=False), storage, ffmpeg=None)
        finally:
            os.umask(old)
        assert result.wav is not None
        assert stat.S_IMODE(result.wav.path.stat().st_mode) == 0o640
        for directory in ("", "acme", "acme/2026", "acme/2026/03"):
            path = storage.base / directory
            assert stat.S_IMODE(path.stat().st_mode) == 0o750, path
        # Nothing left behind by the atomic write.
        assert [p.name for p in result.wav.path.parent.iterdir() if p.name.startswith(".")] == []


def test_paused_span_dropped_by_asterisk_becomes_silence_of_its_length(
    storage: RecordingStorage, spool: Path
) -> None:
    # As Asterisk writes a paused recording: 1000 ms before the pause, then
    # straight on with what came after it (a different tone, to see where
    # it lands). The pause lasted 500 ms of wall-clock time.
    write_leg(spool / "caller.wav", tone(CALLER_HZ, 1000), tone(AFTER_PAUSE_HZ, 1000))
    write_leg(spool / "agent.wav", tone(AGENT_HZ, 1000), tone(AGENT_HZ, 1000))
    result = postprocess(job(spool, paused=((1000, 1500),)), storage, ffmpeg=None)

    assert result.wav is not None
    assert abs(result.wav.duration_ms - 2500) <= 20
    left, right, _ = read_stereo(result.wav.path)
    for channel in (left, right):
        assert rms(window(channel, 1000, 1500)) == 0  # digital silence, the span's length
        assert rms(window(channel, 900, 1000)) > 5000
        assert rms(window(channel, 1500, 1600)) > 5000
    assert dominant(window(left, 0, 1000), CALLER_HZ, AFTER_PAUSE_HZ) == CALLER_HZ
    assert dominant(window(left, 1500, 2500), CALLER_HZ, AFTER_PAUSE_HZ) == AFTER_PAUSE_HZ


def test_paused_span_kept_in_the_file_is_overwritten_with_silence(
    storage: RecordingStorage, spool: Path
) -> None:
    # Should a PBX write the paused audio after all: it is zeroed, the
    # length does not change.
    write_leg(spool / "caller.wav", tone(CALLER_HZ, 2500))
    write_leg(spool / "agent.wav", tone(AGENT_HZ, 2500))
    result = postprocess(
        job(spool, paused=((1000, 1500),), paused_audio="kept"), storage, ffmpeg=None
    )
    assert result.wav is not None
    assert abs(result.wav.duration_ms - 2500) <= 20
    left, right, _ = read_stereo(result.wav.path)
    assert rms(window(left, 1000, 1500)) == 0
    assert rms(window(right, 1000, 1500)) == 0
    assert rms(window(left, 1500, 2500)) > 5000


def test_per_leg_pauses_and_a_leg_that_started_during_a_pause(
    storage: RecordingStorage, spool: Path
) -> None:
    # The agent leg's recording started at 1200 ms, inside the call's pause
    # (1000-1500): Asterisk dropped its first 300 ms.
    write_leg(spool / "caller.wav", tone(CALLER_HZ, 1000), tone(CALLER_HZ, 1000))
    write_leg(spool / "agent.wav", tone(AGENT_HZ, 1000))
    result = postprocess(
        job(
            spool,
            paused=((1000, 1500),),
            agent=Leg(spool / "agent.wav", start_ms=1200, paused=((1000, 1500),)),
        ),
        storage,
        ffmpeg=None,
    )
    assert result.wav is not None
    left, right, _ = read_stereo(result.wav.path)
    assert abs(len(right) * 1000 / RATE - 2500) <= 20
    assert rms(window(right, 0, 1500)) == 0
    assert rms(window(right, 1500, 2500)) > 5000
    assert rms(window(left, 1000, 1500)) == 0


def test_trim_at_withdrawal(storage: RecordingStorage, spool: Path) -> None:
    write_leg(spool / "caller.wav", tone(CALLER_HZ, 3000))
    write_leg(spool / "agent.wav", tone(AGENT_HZ, 3000))
    result = postprocess(job(spool, trim_at_ms=1200), storage, ffmpeg=None)
    assert result.wav is not None
    assert abs(result.wav.duration_ms - 1200) <= 20
    left, right, _ = read_stereo(result.wav.path)
    assert abs(len(left) * 1000 / RATE - 1200) <= 20
    assert rms(window(left, 1100, 1200)) > 5000  # kept right up to the withdrawal
    assert rms(window(right, 1100, 1200)) > 5000


def test_withdrawn_before_any_audio_keeps_nothing(storage: RecordingStorage, spool: Path) -> None:
    write_leg(spool / "caller.wav", tone(CALLER_HZ, 500))
    result = postprocess(job(spool, trim_at_ms=0), storage, ffmpeg=None)
    assert result == PostprocessResult((), (), True)
    assert not (spool / "caller.wav").exists()
    assert not storage.base.exists() or not any(storage.base.rglob("*.wav"))


def test_delete_policy_removes_an_earlier_output_too(
    storage: RecordingStorage, spool: Path
) -> None:
    # Policy "delete" is a cut at 0 ms; it also undoes an earlier run's files.
    write_leg(spool / "caller.wav", tone(CALLER_HZ, 500))
    call = uuid.uuid4()
    first = postprocess(job(spool, call_id=call, remove_legs=False), storage, ffmpeg=None)
    assert first.wav is not None
    assert first.wav.path.exists()
    assert postprocess(job(spool, call_id=call, trim_at_ms=0), storage, ffmpeg=None).files == ()
    assert not first.wav.path.exists()
    assert not (spool / "caller.wav").exists()


# -- missing legs, failures, reruns --------------------------------------------------


def test_a_missing_leg_is_a_silent_channel(storage: RecordingStorage, spool: Path) -> None:
    write_leg(spool / "caller.wav", tone(CALLER_HZ, 1000))
    result = postprocess(job(spool), storage, ffmpeg=None)  # no agent.wav
    assert result.wav is not None
    left, right, _ = read_stereo(result.wav.path)
    assert rms(left) > 5000
    assert rms(right) == 0
    assert result.legs_removed
    assert not (spool / "caller.wav").exists()


def test_legs_of_different_rates_are_merged_at_the_higher(
    storage: RecordingStorage, spool: Path
) -> None:
    write_leg(spool / "caller.wav", tone(CALLER_HZ, 1000))
    # A `wav16` leg (16 kHz): samples for 1000 ms at 16 kHz.
    samples = array.array(
        "h", (round(8000 * math.sin(2 * math.pi * AGENT_HZ * i / 16000)) for i in range(16000))
    )
    write_leg(spool / "agent.wav", samples, rate=16000)
    result = postprocess(job(spool), storage, ffmpeg=None)
    assert result.wav is not None
    left, right, rate = read_stereo(result.wav.path)
    assert rate == 16000
    assert abs(result.wav.duration_ms - 1000) <= 20
    assert goertzel(right[4000:12000], AGENT_HZ, 16000) > 5000
    assert goertzel(right[4000:12000], CALLER_HZ, 16000) < 10
    assert goertzel(left[4000:12000], CALLER_HZ, 16000) > 5000  # resampled, still 440 Hz


def test_no_leg_at_all_is_an_error(storage: RecordingStorage, spool: Path) -> None:
    with pytest.raises(NoLegAudio):
        postprocess(job(spool), storage, ffmpeg=None)


def test_a_corrupt_leg_fails_and_keeps_both_legs(storage: RecordingStorage, spool: Path) -> None:
    write_leg(spool / "caller.wav", tone(CALLER_HZ, 500))
    (spool / "agent.wav").write_bytes(b"RIFF\x00\x00not a wave file at all")
    with pytest.raises(PostprocessError):
        postprocess(job(spool), storage, ffmpeg=None)
    assert (spool / "caller.wav").exists()
    assert (spool / "agent.wav").exists()
    assert not storage.base.exists() or not any(storage.base.rglob("*.wav"))


def test_rerun_after_the_legs_were_removed_describes_the_stored_file(
    storage: RecordingStorage, spool: Path
) -> None:
    write_leg(spool / "caller.wav", tone(CALLER_HZ, 700))
    first = postprocess(job(spool, call_id=(call := uuid.uuid4())), storage, ffmpeg=None)
    # A crash before the result reached the database: the job runs again.
    again = postprocess(job(spool, call_id=call), storage, ffmpeg=None)
    assert again.files == first.files


def test_legs_are_kept_when_asked(storage: RecordingStorage, spool: Path) -> None:
    write_leg(spool / "caller.wav", tone(CALLER_HZ, 200))
    result = postprocess(job(spool, remove_legs=False), storage, ffmpeg=None)
    assert result.legs_removed is False
    assert (spool / "caller.wav").exists()


def test_job_validation(spool: Path) -> None:
    with pytest.raises(UnsafePath):
        job(spool, tenant_id="../etc")
    with pytest.raises(ValueError, match="timezone"):
        job(spool, started_at=dt.datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="paused span"):
        job(spool, paused=((500, 100),))
    with pytest.raises(ValueError, match="always written"):
        job(spool, formats=("wav",))
    with pytest.raises(ValueError, match="start_ms"):
        Leg(spool / "x.wav", start_ms=-1)


# -- compressed copies ----------------------------------------------------------------


def test_mp3_and_opus_when_ffmpeg_is_there(storage: RecordingStorage, spool: Path) -> None:
    ffmpeg = need_ffmpeg()
    write_leg(spool / "caller.wav", tone(CALLER_HZ, 2000))
    write_leg(spool / "agent.wav", tone(AGENT_HZ, 2000))
    result = postprocess(job(spool, formats=("mp3", "opus")), storage, ffmpeg=ffmpeg)

    assert [f.format for f in result.files] == ["wav", "mp3", "opus"]
    assert result.skipped_formats == ()
    for file in result.files:
        assert file.path.exists()
        assert file.path.suffix == f".{file.format}"
        assert abs(file.duration_ms - 2000) <= 20, file
        assert file.sha256 == hashlib.sha256(file.path.read_bytes()).hexdigest()
        assert stat.S_IMODE(file.path.stat().st_mode) == 0o640
    codecs = {
        f.format: subprocess.run(
            [
                "ffprobe",
                *("-v", "error", "-show_entries", "stream=codec_name,channels"),
                *("-of", "csv=p=0", str(f.path)),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        for f in result.files[1:]
    }
    assert codecs == {"mp3": "mp3,2", "opus": "opus,2"}
    # The channels survive the encoding: decode the MP3 back to 8 kHz stereo.
    decoded = subprocess.run(
        [
            *(ffmpeg, "-v", "error", "-i", str(result.files[1].path)),
            *("-f", "s16le", "-ac", "2", "-ar", str(RATE), "-"),
        ],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    frames = array.array("h", decoded)
    left, right = frames[0::2], frames[1::2]
    assert dominant(left[4000:12000], CALLER_HZ, AGENT_HZ) == CALLER_HZ
    assert dominant(right[4000:12000], CALLER_HZ, AGENT_HZ) == AGENT_HZ


def test_rerun_writes_identical_compressed_files(storage: RecordingStorage, spool: Path) -> None:
    ffmpeg = need_ffmpeg()
    write_leg(spool / "caller.wav", tone(CALLER_HZ, 500))
    call = uuid.uuid4()
    first = postprocess(
        job(spool, call_id=call, formats=("mp3", "opus"), remove_legs=False), storage, ffmpeg=ffmpeg
    )
    second = postprocess(job(spool, call_id=call, formats=("mp3", "opus")), storage, ffmpeg=ffmpeg)
    assert [f.sha256 for f in first.files] == [f.sha256 for f in second.files]


def test_without_ffmpeg_only_the_wav(storage: RecordingStorage, spool: Path) -> None:
    write_leg(spool / "caller.wav", tone(CALLER_HZ, 300))
    result = postprocess(job(spool, formats=("mp3", "opus")), storage, ffmpeg=None)
    assert [f.format for f in result.files] == ["wav"]
    assert result.skipped_formats == ("mp3", "opus")


# -- async ------------------------------------------------------------------------------


async def test_async_wrappers_run_in_a_thread(storage: RecordingStorage, spool: Path) -> None:
    write_leg(spool / "caller.wav", tone(CALLER_HZ, 400))
    write_leg(spool / "c2.wav", tone(CALLER_HZ, 400))
    async with asyncio.timeout(30):
        first = await postprocess_async(job(spool), storage, ffmpeg=None)
        processor = Postprocessor(storage, ffmpeg=None, max_concurrent=1)
        second = await processor.run(job(spool, caller=Leg(spool / "c2.wav")))
    assert first.wav is not None
    assert second.wav is not None
    assert first.wav.sha256 == second.wav.sha256  # same audio, same bytes


# -- storage ----------------------------------------------------------------------------


def test_paths_refuse_traversal(storage: RecordingStorage) -> None:
    call = uuid.uuid4()
    for tenant in ("..", ".", "../acme", "acme/x", "", "Acme", "a" * 64, "acme\x00"):
        with pytest.raises(UnsafePath):
            storage.path_for(tenant, call, STARTED, "wav")
    for call_id in ("../../etc/passwd", "not-a-uuid", f"{call}/../x", ""):
        with pytest.raises(UnsafePath):
            storage.path_for("acme", call_id, STARTED, "wav")
    with pytest.raises(UnsafePath):
        storage.path_for("acme", call, STARTED, "exe")
    for relative in (
        "../acme/2026/03/x.wav",
        f"acme/2026/03/../../../{call}.wav",
        f"/etc/{call}.wav",
        f"acme/2026/13/{call}.wav",
        f"acme/2026/03/{call}.wav/..",
        f"acme/2026/03/{call}.sh",
    ):
        with pytest.raises(UnsafePath):
            storage.resolve(relative)
    # A canonical path round-trips; an upper-case call id is normalised.
    stored = storage.path_for("acme", str(call).upper(), STARTED, "wav")
    assert storage.resolve(stored.relative) == stored


def test_paths_refuse_a_symlink_out_of_the_base(storage: RecordingStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    storage.base.mkdir()
    (storage.base / "acme").symlink_to(outside)
    with pytest.raises(UnsafePath):
        storage.path_for("acme", uuid.uuid4(), STARTED, "wav")


def test_atomic_write_leaves_the_old_file_on_failure(storage: RecordingStorage) -> None:
    stored = storage.path_for("acme", uuid.uuid4(), STARTED, "wav")
    storage.write_bytes(stored, b"first")

    def fail_half_way() -> None:
        with storage.atomic_writer(stored) as fh:
            fh.write(b"half of the second")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        fail_half_way()
    assert stored.absolute.read_bytes() == b"first"
    assert [p.name for p in stored.absolute.parent.iterdir()] == [stored.absolute.name]
    assert storage.remove(stored) is True
    assert storage.remove(stored) is False
