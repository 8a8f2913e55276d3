"""The controller's inbox: each item handled as it is put, in order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import pytest

from pbx_controller.service import Inbox


async def test_items_are_handled_at_once_and_nested_ones_wait_their_turn() -> None:
    seen: list[Any] = []

    def handle(item: Any) -> None:
        seen.append(item)
        if item == "a":
            inbox.put_nowait("a-fed-back")  # as the executor feeds an event back
            assert seen == ["a"]  # not handled inside the handling of "a"

    inbox = Inbox(handle)
    inbox.put_nowait("a")
    assert seen == ["a", "a-fed-back"]
    inbox.put_nowait("b")
    assert seen == ["a", "a-fed-back", "b"]


async def test_an_awaited_step_holds_back_what_comes_after_it() -> None:
    seen: list[Any] = []
    release = asyncio.Event()

    async def resync() -> None:
        await release.wait()
        seen.append("resynced")

    def handle(item: Any) -> Awaitable[None] | None:
        if item == "connected":
            return resync()
        seen.append(item)
        return None

    inbox = Inbox(handle)
    inbox.put_nowait("connected")
    inbox.put_nowait("event-1")
    inbox.put_nowait("event-2")
    await asyncio.sleep(0.01)
    assert seen == []
    assert inbox.qsize() == 2
    release.set()
    async with asyncio.timeout(5):
        while len(seen) < 3:
            await asyncio.sleep(0.001)
    assert seen == ["resynced", "event-1", "event-2"]
    inbox.put_nowait("event-3")
    assert seen[-1] == "event-3"


async def test_a_failing_handler_is_logged_and_the_next_item_still_handled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[Any] = []

    def handle(item: Any) -> None:
        if item == "bad":
            raise RuntimeError("boom")
        seen.append(item)

    inbox = Inbox(handle)
    with caplog.at_level(logging.ERROR):
        inbox.put_nowait("bad")
        inbox.put_nowait("good")
    assert seen == ["good"]
    assert "controller failed on 'bad'" in caplog.text
    assert "boom" in caplog.text


async def test_close_cancels_a_resync_under_way() -> None:
    started = asyncio.Event()

    async def resync() -> None:
        started.set()
        await asyncio.Event().wait()

    inbox = Inbox(lambda item: resync())
    inbox.put_nowait("connected")
    async with asyncio.timeout(5):
        await started.wait()
        await inbox.close()
