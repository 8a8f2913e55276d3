"""Core actions -> ARI requests.

Actions for one channel run strictly in order (answer before play). While
REST goes over the websocket, an action of one request is pipelined: sent at
once behind the earlier ones (Asterisk carries out a websocket's requests in
the order sent), its answer handled by a callback. Otherwise, and for
actions of several dependent requests, they wait their turn on the
channel's lane, a task; different channels run concurrently. A failure
becomes an `ActionFailed` event fed back to the core, so the call flow
decides what the caller hears next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from pbx_controller.asterisk.ari import (
    AriBadRequest,
    AriClient,
    AriConflict,
    AriError,
    AriNotFound,
    AriUnavailable,
    ChannelGone,
    Rest,
    RestCall,
)
from pbx_controller.core import actions as a
from pbx_controller.core import events as e
from pbx_controller.core.agent import AgentStateRecord
from pbx_controller.core.cdr import CdrRecord
from pbx_controller.core.recording import RecordingJob

log = logging.getLogger(__name__)

# Asterisk's 400 to an originate whose originator channel no longer exists
# (res/ari/resource_channels.c): a 400 alone may also be a bad endpoint.
ORIGINATOR_NOT_FOUND = "originator channel was not found"

# Between tries to record a snoop channel that has not entered the app yet.
SNOOP_RETRY_DELAYS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


class CdrSink(Protocol):
    """Takes a CDR: at once (the outbox appends it; delivery is its own
    business), or by returning an awaitable that the executor sees through
    (a sink straight to the database: the demo, tests)."""

    def write(self, cdr: CdrRecord) -> Awaitable[None] | None: ...


class AgentLogSink(Protocol):
    """Takes a row at once (it queues it; writing is its own business)."""

    def write(self, record: AgentStateRecord) -> None: ...


class RecordingSink(Protocol):
    """Where recordings go once consent allowed them (recordings/pipeline.py)."""

    async def open(self, action: a.OpenRecording) -> None: ...
    async def process(self, job: RecordingJob) -> None: ...


class NoRecordings:
    """No recording pipeline (tests of other things): log, keep nothing."""

    async def open(self, action: a.OpenRecording) -> None:
        log.warning("call %s: recording without a pipeline", action.call_id)

    async def process(self, job: RecordingJob) -> None:
        log.warning("call %s: recording not processed (no pipeline)", job.call_id)


class LoggingAgentLog:
    """Agent state changes to the log only (tests, the demo before a database)."""

    def write(self, record: AgentStateRecord) -> None:
        log.info("agent %s: %s -> %s", record.agent_id, record.previous.value, record.state.value)


class Executor:
    def __init__(
        self,
        ari: AriClient,
        feed: Callable[[e.Event], None],
        cdrs: CdrSink,
        agent_log: AgentLogSink | None = None,
        recordings: RecordingSink | None = None,
    ) -> None:
        self.ari = ari
        self.feed = feed
        self.cdrs = cdrs
        self.agent_log: AgentLogSink = agent_log or LoggingAgentLog()
        self.recordings: RecordingSink = recordings or NoRecordings()
        self._lanes: dict[str, deque[a.Action]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._bridges: dict[str, asyncio.Task[None]] = {}  # bridge id -> its create request
        self._in_flight = 0  # pipelined requests not answered yet
        self._all_answered: asyncio.Future[None] | None = None  # drain() waits on it

    def submit(self, actions: Iterable[a.Action]) -> None:
        for action in actions:
            match action:
                case a.StartTimer(timer_id, delay_ms):
                    self._start_timer(timer_id, delay_ms)
                case a.CancelTimer(timer_id):
                    handle = self._timers.pop(timer_id, None)
                    if handle is not None:
                        handle.cancel()
                case a.EmitCdr(cdr):
                    self._emit_cdr(cdr)  # taken at once, no task per CDR
                case a.StopPlayback(playback_id):
                    call = Rest.stop_playback(playback_id)
                    if not self._pipeline(call, self._quiet_done):
                        self._spawn(self._quietly(self.ari.call(call)))
                case a.DestroyBridge(bridge_id):
                    # A bridge still being created by a task (REST over HTTP)
                    # is destroyed by a task too, once created.
                    if bridge_id in self._bridges or not self._pipeline(
                        Rest.destroy_bridge(bridge_id), self._quiet_done
                    ):
                        self._spawn(self._quietly(self._destroy_bridge(bridge_id)))
                case a.RecordAgentState(record):
                    self._record_agent_state(record)  # queued, no task per row
                case a.OpenRecording():
                    self._spawn(self._logged(self.recordings.open(action), action.call_id))
                case a.ProcessRecording(job):
                    self._spawn(self._logged(self.recordings.process(job), job.call_id))
                case a.PrepareBridge(bridge_id):
                    self._create_bridge(bridge_id)
                case a.Bridge(_, channel_ids):
                    # The channels go in on the caller's lane, after its
                    # earlier actions (stop the hold music first).
                    self._enqueue(channel_ids[0], action)
                case _:
                    self._enqueue(action.channel_id, action)

    async def drain(self) -> None:
        """Wait until every submitted action has been carried out."""
        while self._tasks or self._in_flight:
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
                continue
            if self._all_answered is None or self._all_answered.done():
                self._all_answered = asyncio.get_running_loop().create_future()
            await self._all_answered

    def close(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    # -- lanes -------------------------------------------------------------------

    def _enqueue(self, channel_id: str, action: a.Action) -> None:
        lane = self._lanes.get(channel_id)
        if lane is not None:
            lane.append(action)  # the running worker will get to it
            return
        call = self._single_request(action)
        if call is not None and self._pipeline(call, self._lane_done(channel_id, action)):
            return
        self._lanes[channel_id] = deque([action])
        self._spawn(self._run_lane(channel_id))

    def _single_request(self, action: a.Action) -> RestCall | None:
        """The one request an action is, or None for an action of several
        dependent requests (a lane task carries those out)."""
        match action:
            case a.Answer(channel_id):
                return Rest.answer(channel_id)
            case a.Play(channel_id, playback_id, media):
                return Rest.play(channel_id, playback_id, media)
            case a.Hangup(channel_id, reason):
                return Rest.hangup(channel_id, reason)
            case a.ContinueInDialplan(channel_id, context, extension, priority):
                return Rest.continue_in_dialplan(channel_id, context, extension, priority)
            case a.Originate(channel_id, endpoint, app_args, caller_id, timeout_ms, originator):
                return Rest.originate(
                    self.ari.app,
                    endpoint,
                    channel_id=channel_id,
                    app_args=app_args,
                    caller_id=caller_id or None,
                    timeout_s=max(1, -(-timeout_ms // 1000)),
                    originator=originator or None,
                )
            case a.Bridge(bridge_id, channel_ids) if bridge_id not in self._bridges:
                # Its bridge was created by a pipelined request sent earlier
                # (PrepareBridge), or never: then this fails as BridgeGone.
                return Rest.add_to_bridge(bridge_id, channel_ids)
            case a.StartMoh(channel_id, moh_class):
                return Rest.start_moh(channel_id, moh_class)
            case a.StopMoh(channel_id):
                return Rest.stop_moh(channel_id)
            case a.PauseRecording(_, name):
                return Rest.pause_recording(name)
            case a.ResumeRecording(_, name):
                return Rest.unpause_recording(name)
        return None

    def _pipeline(self, call: RestCall, done: Callable[[AriError | None], None]) -> bool:
        """Send now, pipelined, when REST goes over the websocket."""

        def answered(error: AriError | None) -> None:
            self._in_flight -= 1
            if not self._in_flight and self._all_answered and not self._all_answered.done():
                self._all_answered.set_result(None)
            done(error)

        if not self.ari.send(call, answered):
            return False
        self._in_flight += 1
        return True

    def _lane_done(self, channel_id: str, action: a.Action) -> Callable[[AriError | None], None]:
        def done(error: AriError | None) -> None:
            if error is not None:
                self._failed(channel_id, action, error)

        return done

    def _quiet_done(self, error: AriError | None) -> None:
        if error is not None and not isinstance(error, AriNotFound):
            log.warning("%s", error)  # AriNotFound: finished already, the wanted outcome

    def _failed(self, channel_id: str, action: a.Action, exc: AriError) -> None:
        if isinstance(exc, ChannelGone):
            self.feed(e.ActionFailed(channel_id, type(action).__name__, str(exc), gone=True))
            return
        caller_gone = (
            isinstance(action, a.Originate)
            and bool(action.originator)
            and isinstance(exc, AriBadRequest)
            and ORIGINATOR_NOT_FOUND in str(exc)
        )
        if caller_gone:
            log.info("%s on %s: the caller hung up meanwhile", type(action).__name__, channel_id)
        else:
            log.error("%s on %s failed: %s", type(action).__name__, channel_id, exc)
        self.feed(
            e.ActionFailed(
                channel_id,
                type(action).__name__,
                str(exc),
                unanswered=isinstance(exc, AriUnavailable),
                caller_gone=caller_gone,
            )
        )

    async def _run_lane(self, channel_id: str) -> None:
        lane = self._lanes[channel_id]
        try:
            while lane:
                action = lane.popleft()
                try:
                    await self._perform(action)
                except AriError as exc:
                    lane.clear()
                    self._failed(channel_id, action, exc)
        finally:
            del self._lanes[channel_id]

    async def _perform(self, action: a.Action) -> None:
        match action:
            case a.Bridge(bridge_id, channel_ids):
                creating = self._bridges.get(bridge_id)
                if creating is None:
                    await self.ari.create_bridge(bridge_id)
                else:
                    try:
                        await creating  # its AriError, if any, fails the Bridge
                    finally:
                        self._bridges.pop(bridge_id, None)
                await self.ari.add_to_bridge(bridge_id, channel_ids)
            case a.RecordLeg(snoop_id, target, name, app_args):
                await self._record_leg(snoop_id, target, name, app_args)
            case a.StopRecording(snoop_id, name):
                await self._stop_leg(snoop_id, name)
            case _:
                call = self._single_request(action)
                if call is None:
                    raise TypeError(f"no ARI request for {action!r}")
                await self.ari.call(call, parse=False)

    # -- recording legs -----------------------------------------------------------

    async def _record_leg(self, snoop_id: str, target: str, name: str, app_args: str) -> None:
        """Snoop on the party, then record the snoop. The snoop enters our app
        a moment after the POST returns; until it is there, a record request
        gets 409: retry briefly rather than wait for its StasisStart."""
        await self.ari.snoop(target, snoop_id, spy="in", app_args=app_args)
        for delay in SNOOP_RETRY_DELAYS_S:
            try:
                await self.ari.record_channel(snoop_id, name)
                return
            except AriConflict:
                await asyncio.sleep(delay)
        await self.ari.record_channel(snoop_id, name)

    async def _stop_leg(self, snoop_id: str, name: str) -> None:
        # Either may be gone already: the party hung up and took the snoop along.
        with contextlib.suppress(AriNotFound):
            await self.ari.stop_recording(name)
        with contextlib.suppress(AriNotFound):
            await self.ari.hangup(snoop_id)

    # -- bridges ------------------------------------------------------------------

    def _create_bridge(self, bridge_id: str) -> None:
        """POST /bridges now (PrepareBridge, while the agents ring); the lane's
        Bridge step awaits it, so the answer costs one round trip, not two.
        Pipelined, nothing waits: the Bridge's request goes after it, and
        fails (BridgeGone) if this did."""
        if self._pipeline(Rest.create_bridge(bridge_id), self._bridge_done(bridge_id)):
            return

        async def create() -> None:
            await self.ari.create_bridge(bridge_id)

        task = asyncio.get_running_loop().create_task(create())
        # Its outcome is the lane's; if the lane never gets there, it is dropped.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._bridges[bridge_id] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _bridge_done(bridge_id: str) -> Callable[[AriError | None], None]:
        def done(error: AriError | None) -> None:
            if error is not None:
                log.warning("bridge %s not created: %s", bridge_id, error)

        return done

    async def _destroy_bridge(self, bridge_id: str) -> None:
        creating = self._bridges.pop(bridge_id, None)
        if creating is not None:
            # A bridge created after its DELETE would stay forever.
            with contextlib.suppress(AriError):
                await asyncio.shield(creating)
        await self.ari.destroy_bridge(bridge_id)

    # -- the rest ----------------------------------------------------------------

    def _start_timer(self, timer_id: str, delay_ms: int) -> None:
        old = self._timers.pop(timer_id, None)
        if old is not None:
            old.cancel()

        def fire() -> None:
            self._timers.pop(timer_id, None)
            self.feed(e.TimerFired(timer_id))

        self._timers[timer_id] = asyncio.get_running_loop().call_later(delay_ms / 1000, fire)

    def _record_agent_state(self, record: AgentStateRecord) -> None:
        try:
            self.agent_log.write(record)
        except Exception:
            log.exception("agent state of %s could not be written", record.agent_id)

    def _emit_cdr(self, cdr: CdrRecord) -> None:
        try:
            pending = self.cdrs.write(cdr)
        except Exception:
            log.exception("CDR %s could not be written", cdr.call_id)
            return
        if pending is not None:
            self._spawn(self._finish_cdr(pending, cdr))

    async def _finish_cdr(self, pending: Awaitable[None], cdr: CdrRecord) -> None:
        try:
            await pending
        except Exception:
            log.exception("CDR %s could not be written", cdr.call_id)

    async def _logged(self, work: object, call_id: str) -> None:
        try:
            await work  # type: ignore[misc]
        except Exception:
            log.exception("recording of call %s failed", call_id)

    async def _quietly(self, request: object) -> None:
        try:
            await request  # type: ignore[misc]
        except AriNotFound:
            pass  # already finished: the wanted outcome
        except AriError as exc:
            log.warning("%s", exc)

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
