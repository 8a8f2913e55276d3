"""Real SIP callers (sipp) through the PJSIP trunk reach the controller by DID."""

from __future__ import annotations

import pytest

from pbx_controller.core import actions as a
from pbx_controller.core import events as e
from pbx_controller.core.cdr import Disposition
from pbx_controller.core.model import Directory, Tenant
from pbx_controller.sandbox import sipp
from pbx_controller.sandbox.asterisk import controller_settings
from pbx_controller.service import Controller, LoggingCdrSink
from tests.integration.helpers import watch

pytestmark = pytest.mark.asterisk


async def test_sip_callers_are_served_by_did(asterisk) -> None:
    directory = Directory.build(
        [Tenant("acme", "Acme", greeting=("sound:beep",))], [("48221001", "acme")]
    )
    sink = LoggingCdrSink()
    async with Controller(controller_settings(asterisk), directory, sink) as controller:
        watcher = watch(controller)
        result = await sipp.call(asterisk.endpoints.sip_port, "48221001", calls=3, rate=20)
        assert (result.successful, result.failed) == (3, 0), result.output[-2000:]
        unknown = await sipp.call(asterisk.endpoints.sip_port, "48229999", calls=1)
        assert (unknown.successful, unknown.failed) == (1, 0), unknown.output[-2000:]
        await watcher.wait_for(lambda: len(watcher.actions(a.EmitCdr)) == 4)

    arrived = watcher.events(e.CallArrived)
    assert sorted(x.did for x in arrived) == ["48221001"] * 3 + ["48229999"]
    # sipp's From user is 48500<n>: the caller number reaches the core.
    assert all(x.caller_number.startswith("48500") for x in arrived)
    by_did = {}
    for record in sink.records:
        by_did.setdefault(record.did, []).append(record.disposition)
    assert by_did == {
        "48221001": [Disposition.SERVED] * 3,
        "48229999": [Disposition.UNKNOWN_DID],
    }
    assert len({r.call_id for r in sink.records}) == 4
