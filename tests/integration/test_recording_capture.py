"""Recording a real bridged call in Asterisk 22, then post-processing it.

Two Local channels, each far end playing its own tone (dialplan/pbx-test-audio.conf:
the caller 440 Hz, the agent 1200 Hz), are bridged over ARI. Each leg is
recorded through its own snoop channel (spy "in": what that party says), the
agent's leg starting later than the caller's. Both live recordings are paused
and unpaused mid-way (the PCI pause), then stopped; the real files go through
`postprocess`.

What Asterisk 22 does with a paused live recording, measured here on every
run: it writes nothing while paused. A leg file is shorter than the time its
recording ran by the paused time, and the audio on either side of the pause
is joined with no silence in between. Post-processing puts the silence back
at the right place, so the stored file is as long as the call was recorded
and silent while it was paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from pbx_controller.asterisk.ari import AriClient, AriNotFound, StreamConnected
from pbx_controller.recordings.postprocess import Leg, PostprocessJob, find_ffmpeg, postprocess
from pbx_controller.recordings.storage import RecordingStorage
from pbx_controller.sandbox.asterisk import SandboxAsterisk
from tests.unit.test_recordings_postprocess import goertzel, read_stereo, rms, window

pytestmark = pytest.mark.asterisk

CALLER_HZ, AGENT_HZ = 440, 1200
RATE = 8000
# Asterisk writes whole 20 ms frames, and the start, each pause, unpause and
# stop land on a frame boundary: an idle box gives a leg file within a frame
# or two of the wall-clock measure. Under CPU starvation the snoop's audiohook
# also drops frames (seen: 67 ms short at load average 70 on 2 cores), so
# lengths are checked to SLACK_MS: still far from the 800 ms pause, which
# tells "paused audio dropped" from "kept" without doubt.
FRAME_MS = 20
SLACK_MS = 150
MARGIN_MS = 3 * FRAME_MS  # around edges, when checking what is inside a window


class Events:
    """Every ARI event of our app, kept, so a test can wait for one that
    may already have arrived."""

    def __init__(self, client: AriClient) -> None:
        self.seen: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read(client))

    async def _read(self, client: AriClient) -> None:
        while True:
            item = await client.events.get()
            if isinstance(item, dict):
                async with self._changed:
                    self.seen.append(item)
                    self._changed.notify_all()

    async def wait(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async with asyncio.timeout(10), self._changed:
            await self._changed.wait_for(lambda: any(predicate(e) for e in self.seen))
        return next(e for e in self.seen if predicate(e))

    async def channel(self, kind: str, channel_id: str) -> dict[str, Any]:
        return await self.wait(
            lambda e: e.get("type") == kind and e.get("channel", {}).get("id") == channel_id
        )

    async def recording(self, kind: str, name: str) -> dict[str, Any]:
        return await self.wait(
            lambda e: e.get("type") == kind and e.get("recording", {}).get("name") == name
        )

    def close(self) -> None:
        self._task.cancel()


def include_test_audio(asterisk: SandboxAsterisk) -> None:
    """dialplan/pbx-test-audio.conf is rendered into etc/ with the rest;
    until extensions.conf includes it, include it in this run's copy."""
    if "created by" in asterisk.cli("dialplan show pbx-test-audio"):
        return
    extensions = asterisk.host("etc/extensions.conf")
    text = extensions.read_text()
    if '#include "pbx-test-audio.conf"' not in text:
        extensions.write_text(text + '\n#include "pbx-test-audio.conf"\n')
    asterisk.cli("dialplan reload")
    assert "created by" in asterisk.cli("dialplan show pbx-test-audio")


@pytest.fixture
async def ari(asterisk: SandboxAsterisk) -> AsyncIterator[AriClient]:
    await asyncio.to_thread(include_test_audio, asterisk)
    e = asterisk.endpoints
    client = AriClient(e.ari_url, e.ari_username, e.ari_password, f"rec-{uuid.uuid4().hex[:8]}")
    reader = asyncio.create_task(client.run_events())
    async with asyncio.timeout(10):
        assert isinstance(await client.events.get(), StreamConnected)
    yield client
    reader.cancel()
    await client.close()


async def tone_flowing(ari: AriClient, far_end: str) -> None:
    """The far end sets PBX_TONE once PlayTones runs (after its Answer(),
    which waits up to 500 ms for media): poll it, within a deadline."""
    async with asyncio.timeout(10):
        while True:
            try:
                if await ari.get_variable(far_end, "PBX_TONE"):
                    return
            except AriNotFound:
                pass  # not set yet
            await asyncio.sleep(0.02)


def wav_ms(path: Path) -> float:
    with wave.open(str(path), "rb") as reader:
        assert (reader.getnchannels(), reader.getframerate()) == (1, RATE)
        return reader.getnframes() * 1000 / reader.getframerate()


def mono(path: Path) -> Any:
    import array

    with wave.open(str(path), "rb") as reader:
        return array.array("h", reader.readframes(reader.getnframes()))


async def test_snoop_recordings_paused_and_merged_to_stereo(
    ari: AriClient, asterisk: SandboxAsterisk, tmp_path: Path
) -> None:
    events = Events(ari)
    tag = uuid.uuid4().hex[:8]
    caller, agent = f"caller-{tag}", f"agent-{tag}"
    bridge = f"bridge-{tag}"
    names = {caller: f"leg-{tag}-caller", agent: f"leg-{tag}-agent"}
    try:
        for channel, exten in ((caller, "tone-caller"), (agent, "tone-agent")):
            await ari.originate(
                f"Local/{exten}@pbx-test-audio/n",
                channel_id=channel,
                other_channel_id=f"{channel}-far",
            )
        for channel in (caller, agent):
            await events.channel("StasisStart", channel)
            await tone_flowing(ari, f"{channel}-far")
        await ari.create_bridge(bridge)
        await ari.add_to_bridge(bridge, [caller, agent])
        for channel in (caller, agent):
            await events.channel("ChannelEnteredBridge", channel)
            await ari.snoop(channel, f"snoop-{channel}", spy="in")
            await events.channel("StasisStart", f"snoop-{channel}")

        # The recording timeline starts when the caller's leg recording is asked for.
        t0 = time.monotonic()

        def now_ms() -> int:
            return round((time.monotonic() - t0) * 1000)

        await ari.record_channel(f"snoop-{caller}", names[caller])
        caller_start = now_ms()
        await events.recording("RecordingStarted", names[caller])
        await asyncio.sleep(0.3)  # deliberate: the agent's leg starts ~300 ms later
        agent_start = now_ms()
        await ari.record_channel(f"snoop-{agent}", names[agent])
        await events.recording("RecordingStarted", names[agent])

        await asyncio.sleep(0.7)  # deliberate: 0.7 s of both parties talking
        pause_start = now_ms()
        await asyncio.gather(*(ari.pause_recording(n) for n in names.values()))
        await asyncio.sleep(0.8)  # deliberate: 0.8 s of "card data"
        pause_end = now_ms()
        await asyncio.gather(*(ari.unpause_recording(n) for n in names.values()))
        await asyncio.sleep(1.0)  # deliberate: 1 s more after the pause
        stop = now_ms()
        await asyncio.gather(*(ari.stop_recording(n) for n in names.values()))
        for name in names.values():
            finished = await events.recording("RecordingFinished", name)
            assert finished["recording"]["state"] == "done"
    finally:
        for channel in (caller, agent):
            with contextlib.suppress(AriNotFound):
                await ari.hangup(channel)
        with contextlib.suppress(AriNotFound):
            await ari.destroy_bridge(bridge)
        events.close()

    files = {c: asterisk.recording_dir / f"{n}.wav" for c, n in names.items()}
    paused = pause_end - pause_start

    # -- what Asterisk wrote: the paused span is dropped, not kept as silence.
    caller_file = files[caller]
    caller_ran = stop - caller_start
    assert abs(wav_ms(caller_file) - (caller_ran - paused)) <= SLACK_MS, (
        wav_ms(caller_file),
        caller_ran,
        paused,
    )
    assert abs(wav_ms(files[agent]) - (stop - agent_start - paused)) <= SLACK_MS
    raw = mono(caller_file)
    at_pause = pause_start - caller_start
    # Tone right through the point where the pause was: no silence was written.
    for start in range(at_pause - 200, at_pause + 200, 50):
        assert rms(window(raw, start, start + 50)) > 1000, start
    # Only the caller's voice on the caller's leg.
    assert goertzel(window(raw, 100, 600), CALLER_HZ) > 1000
    assert goertzel(window(raw, 100, 600), AGENT_HZ) < 50

    # -- post-processing the real files.
    ffmpeg = find_ffmpeg()
    job = PostprocessJob(
        tenant_id="acme",
        call_id=uuid.uuid4(),
        started_at=dt.datetime.now(dt.UTC),
        caller=Leg(files[caller], start_ms=caller_start),
        agent=Leg(files[agent], start_ms=agent_start),
        paused=((pause_start, pause_end),),
        formats=("mp3", "opus") if ffmpeg else (),
    )
    result = await asyncio.to_thread(postprocess, job, RecordingStorage(tmp_path), ffmpeg=ffmpeg)

    wav = result.wav
    assert wav is not None
    assert abs(wav.duration_ms - stop) <= SLACK_MS, (wav.duration_ms, stop)
    left, right, rate = read_stereo(wav.path)
    assert rate == RATE
    margin = MARGIN_MS
    # Caller left, agent right, before and after the pause.
    for start, end in (
        (caller_start + margin, pause_start - margin),
        (pause_end + margin, stop - margin),
    ):
        assert goertzel(window(left, start, end), CALLER_HZ) > 1000
        assert goertzel(window(left, start, end), AGENT_HZ) < 50
    for start, end in (
        (agent_start + margin, pause_start - margin),
        (pause_end + margin, stop - margin),
    ):
        assert goertzel(window(right, start, end), AGENT_HZ) > 1000
        assert goertzel(window(right, start, end), CALLER_HZ) < 50
    # The agent's channel is silent until its leg's recording started.
    assert rms(window(right, 0, agent_start - margin)) == 0
    # The paused span: silence of its length, in both channels, with the
    # audio on either side back in its place.
    for samples in (left, right):
        assert rms(window(samples, pause_start, pause_end)) == 0
        assert rms(window(samples, pause_start - 100 - margin, pause_start - margin)) > 1000
        assert rms(window(samples, pause_end + margin, pause_end + 100 + margin)) > 1000
    assert not any(path.exists() for path in files.values())  # the raw legs are gone
    if ffmpeg:
        assert [f.format for f in result.files] == ["wav", "mp3", "opus"]
        for file in result.files[1:]:
            assert abs(file.duration_ms - wav.duration_ms) <= FRAME_MS
