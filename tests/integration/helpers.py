"""Helpers for tests against the real Asterisk: watch what the controller
decides, and wait for it (never with fixed sleeps)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pbx_controller.core import actions as a
from pbx_controller.core import events as e
from pbx_controller.service import Controller

T = TypeVar("T")


@dataclass
class Watcher:
    """Records every (event, actions) the controller's engine produced."""

    steps: list[tuple[e.Event, list[a.Action]]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, event: e.Event, actions: list[a.Action]) -> None:
        self.steps.append((event, actions))
        self.changed.set()

    def events(self, kind: type[T]) -> list[T]:
        return [ev for ev, _ in self.steps if isinstance(ev, kind)]

    def actions(self, kind: type[T]) -> list[T]:
        return [act for _, acts in self.steps for act in acts if isinstance(act, kind)]

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0) -> T:
        async with asyncio.timeout(timeout):
            while True:
                result = predicate()
                if result:
                    return result
                self.changed.clear()
                await self.changed.wait()


def watch(controller: Controller) -> Watcher:
    watcher = Watcher()
    controller.observers.append(watcher)
    return watcher


async def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll a condition on something outside the controller (a file, a row)."""
    async with asyncio.timeout(timeout):
        while not (result := predicate()):
            await asyncio.sleep(interval)
        return result
