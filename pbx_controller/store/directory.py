"""Load the core's Directory (tenants and DIDs) from the database."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pbx_controller.core.model import Directory, Tenant
from pbx_controller.store import models as m

DEFAULT_GREETING = ("sound:hello-world",)


async def load_directory(sessions: async_sessionmaker[AsyncSession]) -> Directory:
    async with sessions() as session:
        tenants = (await session.scalars(select(m.Tenant).where(m.Tenant.active))).all()
        dids = (await session.execute(select(m.Did.number, m.Did.tenant_id))).all()
    active = {t.id for t in tenants}
    return Directory.build(
        [
            Tenant(
                id=t.id,
                name=t.name,
                timezone=t.timezone,
                greeting=tuple(t.greeting_sound.split("&"))
                if t.greeting_sound
                else DEFAULT_GREETING,
            )
            for t in tenants
        ],
        # A DID of a deactivated tenant is treated as unknown.
        [(number, tenant_id) for number, tenant_id in dids if tenant_id in active],
    )
