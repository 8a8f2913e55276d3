"""Load the core's Directory from the database: tenants (greeting, time zone,
business hours, consent rules, recording rules), DIDs and the queue each
rings, queues, and agents with their skills and memberships.

It goes through `config_store.read_config`, the same read `pbxctl config
show` prints, so the service, the CLI and the database agree. Deactivated
tenants and agents and retired queues are left out; a DID of a deactivated
tenant is an unknown DID.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pbx_controller.configfile import DEFAULT_GREETING
from pbx_controller.core.model import Directory
from pbx_controller.store.config_store import StoredConfigError, load_config

__all__ = ["DEFAULT_GREETING", "StoredConfigError", "load_directory"]


async def load_directory(sessions: async_sessionmaker[AsyncSession]) -> Directory:
    """Raises StoredConfigError when the rows do not make a consistent
    directory (e.g. a DID written by hand that names another tenant's queue)."""
    config = await load_config(sessions)
    try:
        return config.directory()
    except ValueError as exc:
        raise StoredConfigError(f"stored configuration is inconsistent: {exc}") from exc
