"""When the controller was last known to be running: a stamp file that the
running controller rewrites every few seconds (`<data_dir>/alive`).

A stopping controller logs every agent out. One that is killed (kill -9,
the OOM killer, power) cannot, and the agent log would say the agents were
ready all the time it was down: readiness billed for hours nobody could
take a call. The next run reads the stamp and logs them out as of then
(`core.agent.lost_run_logout`); it bills at most `every_s` too little.

The stamp is one fixed-width line rewritten in place, without fsync: a
killed process leaves it in the page cache, which survives; a power cut may
leave an older one, which errs the same (cheaper) way.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

STAMP_NAME = "alive"
STAMP_EVERY_S = 5.0


def _encode(at: datetime) -> bytes:
    # Always 25 bytes ("2026-11-28T09:30:00.123Z\n"): a rewrite in place
    # leaves nothing of a longer earlier stamp.
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3].encode() + b"Z\n"


class LivenessStamp:
    def __init__(self, data_dir: Path, every_s: float = STAMP_EVERY_S) -> None:
        if every_s <= 0:
            raise ValueError("every_s must be positive")
        self.path = data_dir / STAMP_NAME
        self.every_s = every_s

    def read(self) -> datetime | None:
        """The last stamp; None when there is none or it is unreadable (said in the log)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("liveness stamp %s unreadable: %s", self.path, exc)
            return None
        try:
            at = datetime.fromisoformat(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            log.warning("liveness stamp %s holds no time: %r", self.path, raw[:40])
            return None
        if at.utcoffset() is None:
            log.warning("liveness stamp %s has no time zone: %r", self.path, raw[:40])
            return None
        return at.astimezone(UTC)

    async def run(self) -> None:
        """Stamp now, then every `every_s`, until cancelled. A failing disk
        is logged once per change of error, and the stamping goes on. Read
        the last run's stamp before: this replaces it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            # Serving goes on; after a crash the next run bills less (see above).
            log.error("liveness stamp %s cannot be written: %s", self.path, exc)
            return
        failing: str | None = None
        try:
            while True:
                try:
                    os.pwrite(fd, _encode(datetime.now(UTC)), 0)
                    failing = None
                except OSError as exc:
                    if str(exc) != failing:
                        log.error("liveness stamp %s not written: %s", self.path, exc)
                    failing = str(exc)
                await asyncio.sleep(self.every_s)
        finally:
            os.close(fd)
