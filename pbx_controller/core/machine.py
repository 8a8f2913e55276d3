"""Transition tables: every state machine in core/ keeps its legal moves here
as data, in one table per machine.

A table maps (state, event name) to the set of states the machine may move
to on that event. Handlers decide *which* of them; the table decides what is
legal. Anything else raises `InvalidTransition`, which the caller logs: an
unexpected event is never silently ignored.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

S = TypeVar("S", bound=Enum)


class InvalidTransition(Exception):
    """An event arrived that the machine's table does not allow in its state."""

    def __init__(self, machine: str, state: Enum, event: str, target: Enum | None = None) -> None:
        self.machine = machine
        self.state = state
        self.event = event
        self.target = target
        where = f"{machine}: {event} in state {state.value}"
        super().__init__(where if target is None else f"{where} cannot lead to {target.value}")


@dataclass(frozen=True)
class TransitionTable(Generic[S]):
    name: str
    edges: Mapping[tuple[S, str], frozenset[S]]

    def targets(self, state: S, event: str) -> frozenset[S]:
        try:
            return self.edges[(state, event)]
        except KeyError:
            raise InvalidTransition(self.name, state, event) from None

    def allows(self, state: S, event: str) -> bool:
        return (state, event) in self.edges

    def move(self, state: S, event: str, target: S) -> S:
        if target not in self.targets(state, event):
            raise InvalidTransition(self.name, state, event, target)
        return target

    def events(self) -> frozenset[str]:
        return frozenset(event for _, event in self.edges)

    def __iter__(self) -> Iterator[tuple[S, str, S]]:
        for (state, event), targets in self.edges.items():
            for target in sorted(targets, key=lambda s: str(s.value)):
                yield state, event, target

    def mermaid(self) -> str:
        """A state diagram generated from the table itself (for the README)."""
        lines = ["stateDiagram-v2"]
        lines += [f"    {a.value} --> {b.value}: {event}" for a, event, b in self]
        return "\n".join(lines)
