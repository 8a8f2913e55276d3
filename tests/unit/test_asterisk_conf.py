"""The Asterisk side: template rendering, and what the shipped configuration
promises (loopback binds, no committed secrets, no direct media, explicit
modules)."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from pbx_controller.asterisk.conf import (
    CONF_DIR,
    DIALPLAN_DIR,
    ConfTemplateError,
    placeholders,
    render_all,
    render_text,
    template_files,
)

# -- a small parser for Asterisk's config format -----------------------------------------

Section = tuple[str, list[tuple[str, str]]]  # (name, [(key, value), ...]) in file order
_HEADER = re.compile(r"^\[([^\]]+)\](?:\(([^)]*)\))?\s*$")
_OPTION = re.compile(r"^([^=;\s][^=]*?)\s*=>?\s*(.*?)\s*$")


def strip_comment(line: str) -> str:
    """Asterisk comments start at an unescaped ';'."""
    return re.split(r"(?<!\\);", line, maxsplit=1)[0].rstrip()


def parse(text: str) -> list[Section]:
    """Sections in order. Repeated names stay separate (pjsip's [pstn] endpoint,
    aor and identify); `[name](tmpl)` inherits the options of template `tmpl`,
    and `[name](!)` templates are left out."""
    sections: list[Section] = []
    templates: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = strip_comment(raw).strip()
        if not line:
            continue
        if line.startswith("#"):
            # File inclusion only: an #exec would run a shell at every reload.
            assert line.split()[0] in ("#include", "#tryinclude"), f"directive: {raw!r}"
            continue
        if header := _HEADER.match(line):
            name, flags = header.group(1), (header.group(2) or "")
            parents = [f.strip() for f in flags.split(",") if f.strip() and f.strip() != "!"]
            current = [option for parent in parents for option in templates[parent]]
            if "!" in flags:
                templates[name] = current
            else:
                sections.append((name, current))
            continue
        option = _OPTION.match(line)
        assert option is not None, f"unreadable line: {raw!r}"
        assert current is not None, f"option outside any section: {raw!r}"
        current.append((option.group(1).strip().lower(), option.group(2)))
    return sections


def test_parser_refuses_exec() -> None:
    with pytest.raises(AssertionError, match="directive"):
        parse('#exec "/bin/echo [x]"\n')


def values(section: Section, key: str) -> list[str]:
    return [value for k, value in section[1] if k == key]


def last(section: Section, key: str) -> str | None:
    found = values(section, key)
    return found[-1] if found else None


def section_named(sections: list[Section], name: str) -> Section:
    matches = [s for s in sections if s[0] == name]
    assert len(matches) == 1, f"[{name}] appears {len(matches)} times"
    return matches[0]


def host_of(bind: str) -> str:
    """'127.0.0.1:5060' -> '127.0.0.1'; '[::1]:5060' -> '::1'."""
    if bind.startswith("["):
        return bind[1 : bind.index("]")]
    return bind.rsplit(":", 1)[0] if bind.count(":") == 1 else bind


def test_parser_reads_templates_and_repeated_sections() -> None:
    text = (
        "[base](!)\ntype = endpoint ; comment\ndirect_media = no\n"
        '[a](base)\ncontext = x\n#include "more.conf"\n[a]\ntype = aor\n'
        "exten => s,1,NoOp(a\\;b)\n"
    )
    assert parse(text) == [
        ("a", [("type", "endpoint"), ("direct_media", "no"), ("context", "x")]),
        ("a", [("type", "aor"), ("exten", "s,1,NoOp(a\\;b)")]),
    ]


# -- rendering ---------------------------------------------------------------------------


def test_render_fills_placeholders_with_or_without_spaces() -> None:
    text = "port = {{ http_port }}\nbind = {{http_host}}:{{  sip_port  }}\n"
    assert render_text(
        text, {"http_port": "8088", "http_host": "127.0.0.1", "sip_port": "5060"}, source="x.conf"
    ) == ("port = 8088\nbind = 127.0.0.1:5060\n")


def test_render_fills_every_occurrence_and_ignores_extra_values() -> None:
    out = render_text("{{ a }}-{{ a }}", {"a": "1", "unused": "2"}, source="x.conf")
    assert out == "1-1"


def test_a_value_is_not_rendered_again() -> None:
    # A password that happens to look like a placeholder stays as it is.
    assert render_text("secret = {{ p }}", {"p": "{{ q }}"}, source="m.conf") == "secret = {{ q }}"


def test_unknown_placeholder_names_file_and_placeholder() -> None:
    with pytest.raises(ConfTemplateError) as info:
        render_text("[general]\nport = {{ ami_port }}\n", {"http_port": "1"}, source="manager.conf")
    assert "manager.conf" in str(info.value)
    assert "{{ ami_port }}" in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "exten => _X.,1,NoOp(${EXTEN} ${CALLERID(num)})",
        'same => n,GotoIf($["${STASISSTATUS}" = "SUCCESS"]?done)',
        "same => n,Set(PBX_CALL_ID=${UUID()})",
        "same => n,Verbose(1,${PBX_TENANT} ${EXTEN:3} $[1 + 2])",
        "exten => s,1,Set(X=${SHELL(echo {a})})",
    ],
)
def test_asterisk_variables_pass_through_untouched(text: str) -> None:
    assert render_text(text, {}, source="extensions.conf") == text


def test_render_all_writes_every_template_mode_0640(tmp_path: Path) -> None:
    out = tmp_path / "etc"
    written = render_all(shipped_values(), out)
    assert sorted(p.name for p in written) == sorted(p.name for p in template_files())
    for path in written:
        assert path.parent == out
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path.name
        assert "{{" not in path.read_text(), path.name


def test_render_all_tightens_an_existing_world_readable_file(tmp_path: Path) -> None:
    (tmp_path / "ari.conf").write_text("old")
    (tmp_path / "ari.conf").chmod(0o666)
    render_all(shipped_values(), tmp_path)
    assert stat.S_IMODE((tmp_path / "ari.conf").stat().st_mode) == 0o640
    assert "old" not in (tmp_path / "ari.conf").read_text()


def test_render_all_fails_on_a_missing_value(tmp_path: Path) -> None:
    partial = {k: v for k, v in shipped_values().items() if k != "ari_password"}
    with pytest.raises(
        ConfTemplateError, match=r"ari\.conf: no value for placeholder \{\{ ari_password \}\}"
    ):
        render_all(partial, tmp_path)


@pytest.mark.parametrize("typo", ["{{ AMI_PASSWORD }}", "{{ ami-password }}", "{{ 2nd_port }}"])
def test_a_malformed_placeholder_is_an_error(typo: str) -> None:
    with pytest.raises(ConfTemplateError):
        render_text(f"secret = {typo}\n", {"ami_password": "x"}, source="manager.conf")


# -- the shipped templates ----------------------------------------------------------------


def shipped_values() -> dict[str, str]:
    """A dummy value for every placeholder the templates use."""
    dummy: dict[str, str] = {}
    for name in placeholders():
        if name.endswith(("_port", "_start", "_end")):
            dummy[name] = str(20000 + len(dummy))
        elif name.endswith("_dir"):
            dummy[name] = f"/srv/pbx/{name}"
        else:
            dummy[name] = f"dummy-{name}"
    return dummy


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Section]]:
    out = tmp_path_factory.mktemp("asterisk-etc")
    return {path.name: parse(path.read_text()) for path in render_all(shipped_values(), out)}


def test_templates_are_found() -> None:
    names = {path.name for path in template_files()}
    assert {"http.conf", "manager.conf", "pjsip.conf", "modules.conf", "ari.conf"} <= names
    assert "pbx-controller.conf" in names
    assert {"ari_password", "ami_password"} <= placeholders()


def test_http_binds_to_loopback(rendered: dict[str, list[Section]]) -> None:
    general = section_named(rendered["http.conf"], "general")
    assert last(general, "bindaddr") == "127.0.0.1"
    assert last(general, "tlsenable") in (None, "no")


def test_manager_binds_to_loopback(rendered: dict[str, list[Section]]) -> None:
    general = section_named(rendered["manager.conf"], "general")
    assert last(general, "bindaddr") == "127.0.0.1"
    assert last(general, "tlsenable") in (None, "no")


def test_manager_user_is_limited_to_loopback(rendered: dict[str, list[Section]]) -> None:
    user = section_named(rendered["manager.conf"], "dummy-ami_username")
    assert values(user, "deny") == ["0.0.0.0/0.0.0.0"]
    assert values(user, "permit") == ["127.0.0.1/255.255.255.255"]


def test_every_pjsip_transport_binds_to_loopback(rendered: dict[str, list[Section]]) -> None:
    transports = [s for s in rendered["pjsip.conf"] if last(s, "type") == "transport"]
    assert transports, "no transport in pjsip.conf"
    for transport in transports:
        bind = last(transport, "bind")
        assert bind is not None, transport[0]
        assert host_of(bind) == "127.0.0.1", (transport[0], bind)


def test_every_pjsip_endpoint_has_no_direct_media(rendered: dict[str, list[Section]]) -> None:
    endpoints = [s for s in rendered["pjsip.conf"] if last(s, "type") == "endpoint"]
    assert endpoints, "no endpoint in pjsip.conf"
    for endpoint in endpoints:
        assert last(endpoint, "direct_media") == "no", endpoint[0]


def test_modules_are_listed_explicitly(rendered: dict[str, list[Section]]) -> None:
    modules = section_named(rendered["modules.conf"], "modules")
    assert last(modules, "autoload") == "no"
    loaded = values(modules, "load")
    for needed in ("res_ari.so", "app_stasis.so", "res_pjsip.so", "res_agi.so"):
        assert needed in loaded


# Keys that hold credentials in Asterisk's config files.
_CREDENTIAL_KEY = re.compile(r"(password|secret|passwd|md5_cred)", re.IGNORECASE)
_NOT_CREDENTIALS = {"password_format"}
_ONLY_A_PLACEHOLDER = re.compile(r"^\{\{\s*[a-z_][a-z0-9_]*\s*\}\}$")


def committed_credentials(text: str, source: str) -> list[str]:
    """Credential options whose value is not exactly one placeholder."""
    found = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = strip_comment(raw).strip()
        option = _OPTION.match(line)
        if option is None or line.startswith("["):
            continue
        key, value = option.group(1).strip().lower(), option.group(2)
        credential = _CREDENTIAL_KEY.search(key) and key not in _NOT_CREDENTIALS
        if credential and not _ONLY_A_PLACEHOLDER.match(value):
            found.append(f"{source}:{number}: {key}")
    return found


@pytest.mark.parametrize("path", template_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_template_holds_a_literal_secret(path: Path) -> None:
    assert path.parent in (CONF_DIR, DIALPLAN_DIR)
    assert committed_credentials(path.read_text(), path.name) == []


def test_credential_options_are_placeholders() -> None:
    # The check above is not vacuous: the shipped users do carry credentials.
    texts = {p.name: p.read_text() for p in template_files()}
    assert re.search(r"^secret = \{\{ ami_password \}\}$", texts["manager.conf"], re.M)
    assert re.search(r"^password = \{\{ ari_password \}\}$", texts["ari.conf"], re.M)


@pytest.mark.parametrize(
    "text",
    [
        "[pbx]\nsecret = hunter2\n",
        "[pbx]\npassword=hunter2 ; temporary\n",
        "[auth]\ntype = auth\nPassword = {{ p }}x\n",
        "[auth]\nmd5_cred = 0123456789abcdef\n",
        "[globals]\nARI_PASSWORD = hunter2\n",
    ],
)
def test_credential_checker_reports_literal_values(text: str) -> None:
    assert committed_credentials(text, "x.conf") != []


def test_credential_checker_ignores_comments_and_formats() -> None:
    text = "; password = hunter2\n[u]\npassword_format = plain\npassword = {{ ari_password }}\n"
    assert committed_credentials(text, "x.conf") == []


def test_rendered_credentials_come_from_the_values(rendered: dict[str, list[Section]]) -> None:
    ari_user = section_named(rendered["ari.conf"], "dummy-ari_username")
    assert values(ari_user, "password") == ["dummy-ari_password"]
    ami_user = section_named(rendered["manager.conf"], "dummy-ami_username")
    assert values(ami_user, "secret") == ["dummy-ami_password"]
