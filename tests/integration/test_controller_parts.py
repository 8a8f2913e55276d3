"""The running controller answers the dialplan's FastAGI questions from its
own directory, and its AMI client is logged in."""

from __future__ import annotations

import asyncio

import pytest
from panoramisk.message import Message

from pbx_controller.asterisk.events import TRANSLATED
from pbx_controller.core.model import Directory, Tenant
from pbx_controller.sandbox.asterisk import controller_settings
from pbx_controller.service import Controller, LoggingCdrSink

pytestmark = pytest.mark.asterisk


async def test_controller_answers_did_lookup_and_agent_codes(asterisk) -> None:
    directory = Directory.build([Tenant("acme", "Acme")], [("7001", "acme")])
    async with Controller(controller_settings(asterisk), directory, LoggingCdrSink()) as c:
        assert c.ami is not None
        assert (await c.ami.action({"Action": "Ping"})).response == "Success"
        seen: dict[str, list[str]] = {}
        done = asyncio.Event()

        async def on_varset(event: Message) -> None:
            if event.variable in ("PBX_TENANT", "PBX_RESULT"):
                seen.setdefault(event.exten or event.channel, []).append(
                    f"{event.variable}={event.value}"
                )
                if sum(len(v) for v in seen.values()) == 3:
                    done.set()

        subscription = c.ami.subscribe("VarSet", on_varset)
        for exten, context in (
            ("7001", "pbx-lookup"),
            ("7999", "pbx-lookup"),
            ("*21", "pbx-agents"),
        ):
            await c.ami.action(
                {
                    "Action": "Originate",
                    "Channel": f"Local/{exten}@{context}",
                    "Application": "Wait",
                    "Data": "1",
                    "Async": "true",
                },
                as_list=True,
            )
        async with asyncio.timeout(10):
            await done.wait()
        subscription.cancel()

    values = sorted(v for vs in seen.values() for v in vs)
    # A known DID names its tenant, an unknown one is empty; a Local channel
    # is no agent phone, so the feature code is refused by the adapter.
    assert values == ["PBX_RESULT=NO_ENDPOINT", "PBX_TENANT=", "PBX_TENANT=acme"]


async def test_the_app_asks_asterisk_only_for_the_events_it_reads(asterisk) -> None:
    directory = Directory.build([Tenant("acme", "Acme")], [("7001", "acme")])
    async with Controller(controller_settings(asterisk), directory, LoggingCdrSink()) as c:
        app = await c.ari.request("GET", f"/applications/{c.ari.app}")
    allowed = {entry["type"] for entry in app["events_allowed"]}
    assert allowed == {*TRANSLATED, "RESTResponse"}
