"""`pbxctl tenant`: change one tenant setting without a whole pbx.toml.

    pbxctl tenant set-consent acme opt_in

`set-consent` sets the tenant's recording consent policy in the database
and prints the change ("acme: consent_policy notify -> opt_in"):

- off:     never ask, never record;
- notify:  an announcement says the call is recorded and which digit opts
           out; staying on the line is consent;
- opt_in:  only the agree digit allows recording (the GDPR-safe default).

A running controller reads tenants when it starts: `pbxctl config reload`
(or a restart) applies the new policy to calls from then on. The next `pbxctl config
apply` of a pbx.toml with another `consent_policy` sets that one again:
change the file too.

Exit status: 0 done (or already so), 2 an unknown or deactivated tenant, an
invalid policy, or the database unreachable or unmigrated.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from pbx_controller.cli.config import on_database
from pbx_controller.cli.main import CliError
from pbx_controller.cli.serve import settings_from
from pbx_controller.core.consent import ConsentPolicy

__all__ = ["register", "run_set_consent"]

_POLICIES = ", ".join(p.value for p in ConsentPolicy)


def run_set_consent(args: argparse.Namespace) -> int:
    from pbx_controller.store.config_store import UnknownTenantError, set_consent_policy

    try:
        policy = ConsentPolicy(args.policy)
    except ValueError:
        # Checked here, not by argparse choices: one line, no usage text.
        raise CliError(f"POLICY: {args.policy!r} is not one of {_POLICIES}") from None
    settings = settings_from(args)
    try:
        old = asyncio.run(
            on_database(settings, lambda s: set_consent_policy(s, args.tenant, policy))
        )
    except UnknownTenantError:
        raise CliError(f"TENANT: no tenant {args.tenant!r} (or it is deactivated)") from None
    if old is policy:
        print(f"{args.tenant}: consent_policy is already {policy.value} (no change)")
    else:
        print(f"{args.tenant}: consent_policy {old.value} -> {policy.value}")
        print("`pbxctl config reload` for calls to use it; update pbx.toml to match")
    return 0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    tenant = subparsers.add_parser(
        "tenant",
        help="change a tenant's setting in the database (set-consent)",
        description="Change one tenant setting in the database. A running controller "
        "reads it on `pbxctl config reload` (or a restart); `config apply` sets what "
        "pbx.toml says again.",
    )
    actions = tenant.add_subparsers(dest="tenant_command", required=True, metavar="ACTION")
    consent = actions.add_parser(
        "set-consent",
        help=f"set a tenant's recording consent policy ({_POLICIES})",
        description="Set TENANT's recording consent policy and print old -> new. "
        "off: never ask, never record; notify: an announcement, staying on the line "
        "is consent; opt_in: only the agree digit allows recording. "
        "A running controller picks it up on `pbxctl config reload` (or a restart); "
        "the next `config apply` of a pbx.toml with another consent_policy "
        "sets that one again, so change the file too.",
    )
    consent.add_argument("tenant", metavar="TENANT", help="the tenant's id (pbx.toml [tenants.ID])")
    consent.add_argument("policy", metavar="POLICY", help=_POLICIES)
    consent.set_defaults(func=run_set_consent)
