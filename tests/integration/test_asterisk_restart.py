"""Asterisk crashes (SIGKILL) under a live call and comes back: the
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


async def test_asterisk_crash_mid_call(fresh_asterisk) -> None:
    sink = LoggingCdrSink()
    async with Controller(controller_settings(fresh_asterisk), DIRECTORY, sink) as controller:
        watcher = watch(controller)
        fresh_asterisk.cli("channel originate Local/3001@pbx-inbound application Wait 30")
        arrived = (await watcher.wait_for(lambda: watcher.events(e.CallArrived)))[0]
        await watcher.wait_for(lambda: watcher.actions(a.Play))

        await asyncio.to_thread(fresh_asterisk.restart, crash=True)

        cdr = (await watcher.wait_for(lambda: watcher.actions(a.EmitCdr), timeout=20))[0].cdr
        assert cdr.call_id == arrived.call_id
        assert cdr.disposition is Disposition.FAILED
        assert cdr.hangup_side is HangupSide.SYSTEM
        assert controller.reconnects >= 1

        # The restarted Asterisk's callers are served as before.
        async with asyncio.timeout(10):
            await controller.ari.connected.wait()
        fresh_asterisk.cli("channel originate Local/3002@pbx-inbound application Wait 5")
        await watcher.wait_for(lambda: len(watcher.actions(a.EmitCdr)) == 2, timeout=15)
    assert [r.disposition for r in sink.records] == [Disposition.FAILED, Disposition.SERVED]


async def test_asterisk_stopped_by_ops_mid_call(fresh_asterisk) -> None:
    """`core stop now`: Asterisk hangs its callers up itself. The CDR says so
    (failed, system side), not that the caller abandoned."""
    sink = LoggingCdrSink()
    async with Controller(controller_settings(fresh_asterisk), DIRECTORY, sink) as controller:
        watcher = watch(controller)
        fresh_asterisk.cli("channel originate Local/3001@pbx-inbound application Wait 30")
        arrived = (await watcher.wait_for(lambda: watcher.events(e.CallArrived)))[0]
        await watcher.wait_for(lambda: watcher.actions(a.Play))

        await asyncio.to_thread(fresh_asterisk.restart)

        cdr = (await watcher.wait_for(lambda: watcher.actions(a.EmitCdr), timeout=20))[0].cdr
        assert cdr.call_id == arrived.call_id
        assert (cdr.disposition, cdr.hangup_side) == (Disposition.FAILED, HangupSide.SYSTEM)
        assert watcher.events(e.HangupRequested)[0].by_system
