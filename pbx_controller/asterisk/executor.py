"""Core actions -> ARI requests.

Actions for one channel run strictly in order (answer before play) on that
channel's lane; different channels run concurrently. A failure becomes an
`ActionFailed` event fed back to the core, so the call flow decides what
the caller hears next.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from pbx_controller.asterisk.ari import AriClient, AriError, AriNotFound, ChannelGone
from pbx_controller.core import actions as a
from pbx_controller.core import events as e
from pbx_controller.core.agent import AgentStateRecord
from pbx_controller.core.cdr import CdrRecord

log = logging.getLogger(__name__)


class CdrSink(Protocol):
    async def write(self, cdr: CdrRecord) -> None: ...


class AgentLogSink(Protocol):
    async def write(self, record: AgentStateRecord) -> None: ...


class LoggingAgentLog:
    """Agent state changes to the log only (tests, the demo before a database)."""

    async def write(self, record: AgentStateRecord) -> None:
        log.info("agent %s: %s -> %s", record.agent_id, record.previous.value, record.state.value)


class Executor:
    def __init__(
        self,
        ari: AriClient,
        feed: Callable[[e.Event], None],
        cdrs: CdrSink,
        agent_log: AgentLogSink | None = None,
    ) -> None:
        self.ari = ari
        self.feed = feed
        self.cdrs = cdrs
        self.agent_log: AgentLogSink = agent_log or LoggingAgentLog()
        self._lanes: dict[str, deque[a.Action]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

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
                    self._spawn(self._emit_cdr(cdr))
                case a.StopPlayback(playback_id):
                    self._spawn(self._quietly(self.ari.stop_playback(playback_id)))
                case a.DestroyBridge(bridge_id):
                    self._spawn(self._quietly(self.ari.destroy_bridge(bridge_id)))
                case a.RecordAgentState(record):
                    self._spawn(self._record_agent_state(record))
                case a.Bridge(_, channel_ids):
                    # After the caller's earlier actions (stop the hold music first).
                    self._enqueue(channel_ids[0], action)
                case _:
                    self._enqueue(action.channel_id, action)

    async def drain(self) -> None:
        """Wait until every submitted action has been carried out."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

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
        self._lanes[channel_id] = deque([action])
        self._spawn(self._run_lane(channel_id))

    async def _run_lane(self, channel_id: str) -> None:
        lane = self._lanes[channel_id]
        try:
            while lane:
                action = lane.popleft()
                try:
                    await self._perform(action)
                except ChannelGone as exc:
                    lane.clear()
                    self.feed(
                        e.ActionFailed(channel_id, type(action).__name__, str(exc), gone=True)
                    )
                except AriError as exc:
                    lane.clear()
                    log.error("%s on %s failed: %s", type(action).__name__, channel_id, exc)
                    self.feed(e.ActionFailed(channel_id, type(action).__name__, str(exc)))
        finally:
            del self._lanes[channel_id]

    async def _perform(self, action: a.Action) -> None:
        match action:
            case a.Answer(channel_id):
                await self.ari.answer(channel_id)
            case a.Play(channel_id, playback_id, media):
                await self.ari.play(channel_id, playback_id, media)
            case a.Hangup(channel_id, reason):
                await self.ari.hangup(channel_id, reason)
            case a.ContinueInDialplan(channel_id, context, extension, priority):
                await self.ari.continue_in_dialplan(channel_id, context, extension, priority)
            case a.Originate(channel_id, endpoint, app_args, caller_id, timeout_ms):
                await self.ari.originate(
                    endpoint,
                    channel_id=channel_id,
                    app_args=app_args,
                    caller_id=caller_id or None,
                    timeout_s=max(1, -(-timeout_ms // 1000)),
                )
            case a.Bridge(bridge_id, channel_ids):
                await self.ari.create_bridge(bridge_id)
                await self.ari.add_to_bridge(bridge_id, channel_ids)
            case a.StartMoh(channel_id, moh_class):
                await self.ari.start_moh(channel_id, moh_class)
            case a.StopMoh(channel_id):
                await self.ari.stop_moh(channel_id)
            case _:
                raise TypeError(f"no ARI request for {action!r}")

    # -- the rest ----------------------------------------------------------------

    def _start_timer(self, timer_id: str, delay_ms: int) -> None:
        old = self._timers.pop(timer_id, None)
        if old is not None:
            old.cancel()

        def fire() -> None:
            self._timers.pop(timer_id, None)
            self.feed(e.TimerFired(timer_id))

        self._timers[timer_id] = asyncio.get_running_loop().call_later(delay_ms / 1000, fire)

    async def _record_agent_state(self, record: AgentStateRecord) -> None:
        try:
            await self.agent_log.write(record)
        except Exception:
            log.exception("agent state of %s could not be written", record.agent_id)

    async def _emit_cdr(self, cdr: CdrRecord) -> None:
        try:
            await self.cdrs.write(cdr)
        except Exception:
            log.exception("CDR %s could not be written", cdr.call_id)

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
