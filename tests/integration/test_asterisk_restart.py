"""Asterisk crashes (SIGKILL) or is stopped under a live call and comes back: the
controller reconnects, accounts for the call it lost (one CDR, failed, hung
up by the system), and serves the next caller."""

from __future__ import annotations

import asyncio

import pytest

from pbx_controller.core import actions as a
from pbx_controller.core import events as e
from pbx_controller.core.cdr import Disposition, HangupSide
from pbx_controller.core.model import Directory, Tenant
from pbx_controller.sandbox.asterisk import controller_settings
from pbx_controller.service import Controller, LoggingCdrSink
from tests.integration.helpers import watch

pytestmark = pytest.mark.asterisk

DIRECTORY = Directory.build(
    [
        Tenant("longco", "Long Co", greeting=("sound:silence/10",)),
        Tenant("acme", "Acme", greeting=("sound:beep",)),
    ],
    [("3001", "longco"), ("3002", "acme")],
)


@pytest.mark.parametrize("crash", [True, False], ids=["sigkill", "core-stop-now"])
async def test_asterisk_restart_mid_call(fresh_asterisk, crash: bool) -> None:
    """SIGKILL: the call vanishes unseen. `core stop now`: Asterisk hangs its
    callers up itself (a soft hang-up). Either way the CDR says failed, on the
    system side, not that the caller abandoned."""
    sink = LoggingCdrSink()
    async with Controller(controller_settings(fresh_asterisk), DIRECTORY, sink) as controller:
        watcher = watch(controller)
        fresh_asterisk.cli("channel originate Local/3001@pbx-inbound application Wait 30")
        arrived = (await watcher.wait_for(lambda: watcher.events(e.CallArrived)))[0]
        await watcher.wait_for(lambda: watcher.actions(a.Play))

        await asyncio.to_thread(fresh_asterisk.restart, crash=crash)

        cdr = (await watcher.wait_for(lambda: watcher.actions(a.EmitCdr), timeout=20))[0].cdr
        assert cdr.call_id == arrived.call_id
        assert (cdr.disposition, cdr.hangup_side) == (Disposition.FAILED, HangupSide.SYSTEM)
        # The first hang-up request decides (the Local pair may send a second).
        hangups = watcher.events(e.HangupRequested)
        assert [h.by_system for h in hangups[:1]] == ([] if crash else [True])

        # The restarted Asterisk's callers are served as before (with a soft
        # hang-up the CDR can come before the controller has reconnected).
        async with asyncio.timeout(20):
            while controller.reconnects < 1 or not controller.ari.connected.is_set():
                await asyncio.sleep(0.02)
        fresh_asterisk.cli("channel originate Local/3002@pbx-inbound application Wait 5")
        await watcher.wait_for(lambda: len(watcher.actions(a.EmitCdr)) == 2, timeout=15)
    assert [r.disposition for r in sink.records] == [Disposition.FAILED, Disposition.SERVED]
