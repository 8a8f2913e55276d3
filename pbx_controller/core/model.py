"""The configuration the core decides with: tenants and their DIDs.

Plain frozen data, loaded by the service from the database and handed to
the engine; the engine never reads configuration itself. Queues, agents,
skills and contracts join this module as their features land.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Tenant:
    """A client firm of the call center."""

    id: str
    name: str
    timezone: str = "Europe/Warsaw"
    # Asterisk media URIs played to every caller first, e.g. "sound:hello-world".
    greeting: tuple[str, ...] = ("sound:hello-world",)

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("tenant id must not be empty")


class DuplicateDid(ValueError):
    pass


@dataclass(frozen=True)
class Directory:
    """DID -> tenant. One DID belongs to exactly one tenant."""

    tenants: Mapping[str, Tenant] = field(default_factory=dict)
    dids: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, tenants: Iterable[Tenant], dids: Iterable[tuple[str, str]]) -> Directory:
        by_id = {t.id: t for t in tenants}
        did_map: dict[str, str] = {}
        for did, tenant_id in dids:
            if tenant_id not in by_id:
                raise ValueError(f"DID {did} names unknown tenant {tenant_id!r}")
            if did in did_map and did_map[did] != tenant_id:
                raise DuplicateDid(f"DID {did} belongs to {did_map[did]!r} and {tenant_id!r}")
            did_map[did] = tenant_id
        return cls(MappingProxyType(by_id), MappingProxyType(did_map))

    def tenant_for_did(self, did: str) -> Tenant | None:
        tenant_id = self.dids.get(did)
        return None if tenant_id is None else self.tenants[tenant_id]
