"""The agents' phones as Asterisk PJSIP configuration (pjsip_agents.conf,
which the shipped pjsip.conf includes).

Each agent whose endpoint is `PJSIP/<name>` gets an endpoint `<name>` in the
agents' dialplan context (feature codes), an AOR its phone registers to (one
contact: a phone that registers again replaces the old one) and an auth
named `<name>-auth`. The file holds the digest of the password (MD5 of
username:realm:password, what SIP digest authentication checks: Asterisk
22's `password_digest`), never the password itself.

Passwords come from a file of their own, outside the configuration and the
repository: one line `agent_id = "password"` per agent (TOML).
"""

from __future__ import annotations

import hashlib
import re
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path

from pbx_controller.core.model import AgentProfile

# The digest realm the phones are challenged with (the md5_cred is bound to it).
REALM = "pbx-controller"
AGENTS_CONTEXT = "pbx-agents"
MIN_PASSWORD_LENGTH = 12  # SIP registrars are scanned and brute-forced all day long
# A phone of its own; "PJSIP/0600123456@trunk" (a call out through a trunk) is not.
_PHONE_ENDPOINT = re.compile(r"PJSIP/([A-Za-z0-9._-]{1,60})")


class PhonePasswordsError(ValueError):
    """The passwords file cannot be used; the message names the file and the key."""


def read_passwords(path: Path) -> dict[str, str]:
    """agent id -> password, from a TOML file of `agent_id = "password"` lines."""
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise PhonePasswordsError(f"{path}: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PhonePasswordsError(
            f"{path}: readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it"
        )
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PhonePasswordsError(f"{path}: not a TOML file: {exc}") from None
    passwords: dict[str, str] = {}
    for agent_id, password in data.items():
        if not isinstance(password, str):
            raise PhonePasswordsError(f"{path}: {agent_id}: the password must be a string")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise PhonePasswordsError(
                f"{path}: {agent_id}: the password is shorter than {MIN_PASSWORD_LENGTH} characters"
            )
        passwords[agent_id] = password
    return passwords


def phone_name(agent: AgentProfile) -> str | None:
    """The PJSIP endpoint name of an agent's phone; None for other channels
    (Local/..., a number dialled through a trunk)."""
    match = _PHONE_ENDPOINT.fullmatch(agent.endpoint)
    return match.group(1) if match else None


def md5_cred(username: str, password: str, realm: str = REALM) -> str:
    # MD5 is what SIP digest (RFC 2617, still what phones speak) is built on.
    return hashlib.md5(f"{username}:{realm}:{password}".encode(), usedforsecurity=False).hexdigest()


def render_phones(agents: Mapping[str, AgentProfile], passwords: Mapping[str, str]) -> str:
    """pjsip_agents.conf for `agents`. Every agent with a PJSIP phone needs a
    password, and every password an agent with a phone: either mistake is a
    PhonePasswordsError naming the agents."""
    phones = {agent_id: phone_name(a) for agent_id, a in sorted(agents.items())}
    with_phone = {agent_id for agent_id, name in phones.items() if name is not None}
    missing = sorted(with_phone - passwords.keys())
    if missing:
        raise PhonePasswordsError(f"no password for agent(s) {', '.join(missing)}")
    unknown = sorted(passwords.keys() - with_phone)
    if unknown:
        raise PhonePasswordsError(
            f"password for {', '.join(unknown)}: not an agent with a PJSIP phone"
        )
    sections = ["; Agent phones, written by `pbxctl config phones`: do not edit, write it again.\n"]
    for agent_id, name in phones.items():
        if name is None:
            continue
        sections.append(
            f"; agent {agent_id}\n"
            f"[{name}]\ntype = endpoint\ncontext = {AGENTS_CONTEXT}\ndisallow = all\n"
            "allow = ulaw,alaw,gsm\ndirect_media = no\nrtp_symmetric = yes\n"
            "force_rport = yes\nrewrite_contact = yes\ndtmf_mode = rfc4733\n"
            f"aors = {name}\nauth = {name}-auth\n\n"
            f"[{name}]\ntype = aor\nmax_contacts = 1\nremove_existing = yes\n"
            "qualify_frequency = 30\n\n"
            f"[{name}-auth]\ntype = auth\nauth_type = digest\nusername = {name}\n"
            f"realm = {REALM}\npassword_digest = MD5:{md5_cred(name, passwords[agent_id])}\n"
        )
    return "\n".join(sections)
