"""The recording port of the service: what happens to a recording the core
started (consent allowed it) and later finished.

- `open`: the row, with the consent evidence, while the call is still up.
- `process`: the leg files Asterisk wrote into its spool are merged to
  stereo and converted (post-processing, in a worker thread), stored with
  mode 0640 under `<tenant>/<yyyy>/<mm>/<call>.<ext>`, and described in the
  row (duration, sha256). A withdrawal under a "delete" policy flags the
  recording for the next purge as well.

Without a database (the bare demo) the files are still written; only the
rows are skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pbx_controller.backoff import backoff_s
from pbx_controller.core import actions as a
from pbx_controller.core.consent import ConsentEvidence
from pbx_controller.core.recording import RecordingJob
from pbx_controller.recordings.postprocess import (
    Leg,
    PostprocessJob,
    Postprocessor,
    PostprocessResult,
)
from pbx_controller.recordings.storage import RecordingStorage
from pbx_controller.store.outbox import describe_database_error, is_permanent_database_error
from pbx_controller.store.recordings import (
    ConsentProof,
    NewRecording,
    add_recording,
    complete_recording,
    flag_for_erasure,
    recording_id_for,
)

log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class RecordingPipeline:
    def __init__(
        self,
        storage: RecordingStorage,
        spool_dir: Path,
        sessions: async_sessionmaker[AsyncSession] | None = None,
        *,
        postprocessor: Postprocessor | None = None,
        clock: Callable[[], datetime] = _utc_now,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        retry_for_s: float = 600.0,
    ) -> None:
        self.storage = storage
        self.spool_dir = spool_dir
        self.sessions = sessions
        self.postprocessor = postprocessor or Postprocessor(storage)
        self.clock = clock
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.retry_for_s = retry_for_s
        # The latest results, for tests and the demo (bounded: the service runs for months).
        self.processed: deque[tuple[RecordingJob, PostprocessResult]] = deque(maxlen=1000)
        self.retries = 0

    async def open(self, action: a.OpenRecording) -> None:
        # Not retried: a failure here (database down) is made good when the
        # recording is processed, which adds the row first, idempotently.
        if self.sessions is not None:
            await add_recording(
                self.sessions,
                self._new(action.call_id, action.tenant_id, action.started_at, action.evidence),
            )

    async def process(self, job: RecordingJob) -> None:
        starts = dict(job.leg_starts_ms)
        legs = {
            leg.role: Leg(self.spool_dir / f"{leg.name}.wav", starts[leg.name])
            if leg.name in starts
            else Leg(None)
            for leg in job.legs
        }
        result = await self.postprocessor.run(
            PostprocessJob(
                tenant_id=job.tenant_id,
                call_id=uuid.UUID(job.call_id),
                started_at=job.started_at,
                caller=legs.get("caller", Leg(None)),
                agent=legs.get("agent", Leg(None)),
                paused=job.paused,
                masked=job.masked,
                trim_at_ms=job.trim_at_ms,
                formats=tuple(job.formats),  # type: ignore[arg-type]
            )
        )
        self.processed.append((job, result))
        wav = result.wav
        log.info(
            "call %s: recording %s (%s ms%s)",
            job.call_id,
            wav.relative if wav else "erased, nothing kept",
            wav.duration_ms if wav else 0,
            ", withdrawn" if job.withdrawn else "",
        )
        if self.sessions is not None:
            await self._with_retries(job.call_id, lambda: self._store(job, result))

    async def _store(self, job: RecordingJob, result: PostprocessResult) -> None:
        """The rows for a processed recording. Every step is idempotent, so a
        retry after a failure part-way repeats the steps that had succeeded."""
        assert self.sessions is not None
        # The row is there unless `open` failed (database down then).
        new = self._new(job.call_id, job.tenant_id, job.started_at, job.evidence)
        await add_recording(self.sessions, new)
        now = self.clock()
        await complete_recording(self.sessions, new.recording_id, result.files, now=now)
        if job.erase:
            await flag_for_erasure(
                self.sessions, job.tenant_id, new.call_id, now=now, withdrawn=True
            )

    async def _with_retries(self, call_id: str, step: Callable[[], Awaitable[None]]) -> None:
        """A database that is down only delays the rows: retry with capped,
        jittered backoff for `retry_for_s`. The files are stored already."""
        deadline = time.monotonic() + self.retry_for_s
        attempt = 0
        while True:
            try:
                await step()
                return
            except (SQLAlchemyError, OSError) as exc:
                if is_permanent_database_error(exc) or time.monotonic() >= deadline:
                    raise
                delay = backoff_s(attempt, self.retry_initial_s, self.retry_max_s)
                attempt += 1
                self.retries += 1
                log.warning(
                    "call %s: recording rows not stored (%s); retrying in %.1f s",
                    call_id,
                    describe_database_error(exc),
                    delay,
                )
                await asyncio.sleep(delay)

    def _new(
        self, call_id: str, tenant_id: str, started_at: datetime, evidence: ConsentEvidence
    ) -> NewRecording:
        call_uuid = uuid.UUID(call_id)
        path = self.storage.path_for(tenant_id, call_uuid, started_at, "wav").relative
        return NewRecording(
            recording_id_for(call_uuid),
            call_uuid,
            tenant_id,
            path,
            started_at,
            ConsentProof.from_evidence(evidence),
        )
