"""The liveness stamp: what a killed run leaves for the next one to read."""

from __future__ import annotations

import asyncio
import logging
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pbx_controller.store.liveness import STAMP_NAME, LivenessStamp


async def stamp_for(stamp: LivenessStamp, seconds: float) -> None:
    task = asyncio.create_task(stamp.run())
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_running_stamp_is_read_back_as_the_last_time_it_ran(tmp_path: Path) -> None:
    stamp = LivenessStamp(tmp_path / "data", every_s=0.05)
    assert stamp.read() is None  # no run yet
    started = datetime.now(UTC)
    await stamp_for(stamp, 0.3)
    stopped = datetime.now(UTC)
    last = stamp.read()
    assert last is not None
    assert last.tzinfo is UTC
    # Rewritten while it ran: the last stamp is within one interval of the stop.
    assert started < stopped - timedelta(seconds=0.1) <= last <= stopped
    path = tmp_path / "data" / STAMP_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert len(path.read_bytes()) == len(b"2026-11-28T09:30:00.123Z\n")


async def test_a_longer_leftover_is_replaced_whole(tmp_path: Path) -> None:
    (tmp_path / STAMP_NAME).write_text("2026-11-28T09:30:00.123+00:00 and some more text\n")
    stamp = LivenessStamp(tmp_path, every_s=10)
    await stamp_for(stamp, 0.05)
    last = stamp.read()
    assert last is not None
    assert abs(datetime.now(UTC) - last) < timedelta(seconds=5)


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (b"", "holds no time"),
        (b"yesterday\n", "holds no time"),
        (b"\xff\xfe", "holds no time"),
        (b"2026-11-28T09:30:00\n", "has no time zone"),
    ],
)
def test_an_unreadable_stamp_is_none_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, complaint: str
) -> None:
    (tmp_path / STAMP_NAME).write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert LivenessStamp(tmp_path).read() is None
    assert complaint in caplog.text


async def test_an_unwritable_data_dir_is_logged_and_serving_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.ERROR):
        await asyncio.wait_for(LivenessStamp(blocker / "data").run(), timeout=5)
    assert "cannot be written" in caplog.text


def test_the_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="every_s must be positive"):
        LivenessStamp(tmp_path, every_s=0)
