"""pjsip_agents.conf from the agents and their passwords."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pbx_controller.asterisk.phones import (
    REALM,
    PhonePasswordsError,
    md5_cred,
    read_passwords,
    render_phones,
)
from pbx_controller.core.model import AgentProfile

AGENTS = {
    "ola": AgentProfile("ola", "Ola", "PJSIP/agent-ola"),
    "piotr": AgentProfile("piotr", "Piotr", "PJSIP/agent-piotr"),
    "bench": AgentProfile("bench", "Local", "Local/2001@pbx-bench-agent"),
    "mobile": AgentProfile("mobile", "Mobile", "PJSIP/0600123456@trunk"),
}
PASSWORDS = {"ola": "correct-horse-battery", "piotr": "staple-of-the-month"}


def sections(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """(section name, type) -> its options, as Asterisk's config parser reads them."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    name, options = "", {}
    for line in [*text.splitlines(), "[]"]:
        line = line.split(";", 1)[0].strip()
        if line.startswith("["):
            if name:
                out[(name, options["type"])] = options
            name, options = line.strip("[]"), {}
        elif "=" in line:
            key, value = (x.strip() for x in line.split("=", 1))
            options[key] = value
    return out


def test_each_pjsip_agent_gets_an_endpoint_an_aor_and_a_digest_auth() -> None:
    parsed = sections(render_phones(AGENTS, PASSWORDS))
    assert sorted(parsed) == [
        ("agent-ola", "aor"),
        ("agent-ola", "endpoint"),
        ("agent-ola-auth", "auth"),
        ("agent-piotr", "aor"),
        ("agent-piotr", "endpoint"),
        ("agent-piotr-auth", "auth"),
    ]
    endpoint = parsed[("agent-ola", "endpoint")]
    assert (endpoint["context"], endpoint["aors"], endpoint["auth"]) == (
        "pbx-agents",
        "agent-ola",
        "agent-ola-auth",
    )
    assert parsed[("agent-ola", "aor")]["max_contacts"] == "1"
    auth = parsed[("agent-ola-auth", "auth")]
    # RFC 2617's HA1, computed here from its definition.
    ha1 = hashlib.md5(b"agent-ola:" + REALM.encode() + b":correct-horse-battery").hexdigest()
    assert (auth["auth_type"], auth["username"], auth["realm"]) == ("digest", "agent-ola", REALM)
    assert auth["password_digest"] == f"MD5:{ha1}"
    assert ha1 == md5_cred("agent-ola", "correct-horse-battery")


def test_the_passwords_never_reach_the_file() -> None:
    text = render_phones(AGENTS, PASSWORDS)
    for password in PASSWORDS.values():
        assert password not in text


def test_a_missing_or_a_stray_password_is_named() -> None:
    with pytest.raises(PhonePasswordsError, match="no password for agent\\(s\\) piotr"):
        render_phones(AGENTS, {"ola": PASSWORDS["ola"]})
    with pytest.raises(PhonePasswordsError, match="password for bench, olla: not an agent"):
        render_phones(AGENTS, {**PASSWORDS, "olla": "x" * 12, "bench": "y" * 12})


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "phones.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_passwords_are_read_from_a_private_toml_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'ola = "correct-horse-battery"\n"piotr" = "staple-of-the-month"\n')
    assert read_passwords(path) == PASSWORDS


@pytest.mark.parametrize(
    ("text", "mode", "complaint"),
    [
        ('ola = "correct-horse-battery"\n', 0o644, "readable by others \\(mode 644\\); chmod 600"),
        ('ola = "short"\n', 0o600, "ola: the password is shorter than 12 characters"),
        ("ola = 123456789012345\n", 0o600, "ola: the password must be a string"),
        ("ola = \n", 0o600, "not a TOML file"),
    ],
)
def test_a_bad_passwords_file_is_refused_with_the_reason(
    tmp_path: Path, text: str, mode: int, complaint: str
) -> None:
    with pytest.raises(PhonePasswordsError, match=complaint):
        read_passwords(write(tmp_path, text, mode))


def test_a_missing_passwords_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PhonePasswordsError, match=r"nope\.toml: No such file"):
        read_passwords(tmp_path / "nope.toml")
