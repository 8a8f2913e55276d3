"""Settings: environment over TOML file, operator-worded errors that never echo
a value, secrets that never print, and loopback-only defaults."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr

from pbx_controller.config import (
    AgiSettings,
    AriSettings,
    ConfigError,
    HttpSettings,
    Settings,
    load_settings,
)

SECRET = "s3cr3t-Tok3n-9f8e7d6c"  # looks like a credential; must never be printed


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PBX_* variable of the developer's shell leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("PBX_"):
            monkeypatch.delenv(name)


WriteToml = Callable[..., Path]


@pytest.fixture
def toml(tmp_path: Path) -> WriteToml:
    def write(text: str, name: str = "pbx.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


# -- sources ----------------------------------------------------------------------------


def test_file_values_are_read(toml: WriteToml) -> None:
    path = toml(
        'log_level = "DEBUG"\n[ari]\nurl = "http://127.0.0.1:8089/ari/"\n[agi]\nport = 4600\n'
    )
    settings = load_settings(path)
    assert settings.log_level == "DEBUG"
    assert settings.ari.url == "http://127.0.0.1:8089/ari"  # trailing slash dropped
    assert settings.agi.port == 4600


def test_environment_overrides_the_file(toml: WriteToml, monkeypatch: pytest.MonkeyPatch) -> None:
    path = toml('log_level = "DEBUG"\n[ari]\nusername = "from-file"\napp = "file-app"\n')
    monkeypatch.setenv("PBX_ARI__USERNAME", "from-env")
    monkeypatch.setenv("PBX_LOG_LEVEL", "ERROR")
    settings = load_settings(path)
    assert settings.ari.username == "from-env"
    assert settings.log_level == "ERROR"
    # Merged per key, not per section: the file's other ari keys survive.
    assert settings.ari.app == "file-app"


def test_pbx_config_names_the_file(toml: WriteToml, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PBX_CONFIG", str(toml("[http]\nport = 9000\n")))
    assert load_settings().http.port == 9000


def test_explicit_path_wins_over_pbx_config(
    toml: WriteToml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PBX_CONFIG", str(toml("[http]\nport = 9000\n", "env.toml")))
    assert load_settings(toml("[http]\nport = 9001\n", "arg.toml")).http.port == 9001


def test_secret_from_the_environment_is_a_secret_str(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PBX_ARI__PASSWORD", SECRET)
    password = load_settings().ari.password
    assert isinstance(password, SecretStr)
    assert password.get_secret_value() == SECRET


# -- errors -----------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"settings file {missing} does not exist"):
        load_settings(missing)


def test_invalid_toml_names_the_file_but_not_its_content(toml: WriteToml) -> None:
    path = toml(f"[ari]\npassword = {SECRET}\n")  # unquoted: not TOML
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert str(path) in message
    assert "not valid TOML" in message
    assert "line 2" in message
    assert SECRET not in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (f'[ari]\nurl = "{SECRET}"\n', "ari.url"),
        (f'[ari]\nheartbeat_s = "{SECRET}"\n', "ari.heartbeat_s"),
        (f'[ami]\nport = "{SECRET}"\n', "ami.port"),
        (f'[agi]\nhost = ["{SECRET}"]\n', "agi.host"),
        (f'log_level = "{SECRET}"\n', "log_level"),
        (f'ari = "{SECRET}"\n', "ari"),
        (f'[database]\nurl = ["{SECRET}"]\n', "database.url"),
    ],
)
def test_invalid_value_names_the_key_but_never_the_value(
    toml: WriteToml, text: str, key: str
) -> None:
    path = toml(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert message.startswith(f"invalid settings in {path}: {key}: ")
    assert SECRET not in message
    assert SECRET not in repr(info.value)
    # Nothing chained that a traceback would print either.
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_invalid_environment_value_names_the_variable_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PBX_AMI__PORT", SECRET)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith("invalid settings in environment: ami.port: ")
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("frobnicate = 1\n", "frobnicate"),
        ("[ari]\nhearbeat_s = 5\n", "ari.hearbeat_s"),
        ("[telemetry]\nenabled = true\n", "telemetry"),
    ],
)
def test_unknown_key_is_an_error_naming_it(toml: WriteToml, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf": {key}: Extra inputs are not permitted"):
        load_settings(toml(text))


def test_every_problem_is_reported_at_once(toml: WriteToml) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(toml("[agi]\nport = 0\n[http]\nport = 70000\n"))
    assert "agi.port" in str(info.value)
    assert "http.port" in str(info.value)


def test_malformed_section_in_the_environment_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PBX_ARI", '{"password": "' + SECRET)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "ari" in str(info.value)
    assert SECRET not in str(info.value)


def test_an_environment_error_does_not_blame_the_file(
    toml: WriteToml, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = toml('[ami]\nusername = "pbx"\n')
    monkeypatch.setenv("PBX_AMI__PORT", "five")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "ami.port" in str(info.value)
    assert str(path) not in str(info.value)


# -- secrets never print ---------------------------------------------------------------


def test_secrets_never_appear_in_repr_or_str(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PBX_ARI__PASSWORD", SECRET + "-ari")
    monkeypatch.setenv("PBX_AMI__PASSWORD", SECRET + "-ami")
    monkeypatch.setenv("PBX_DATABASE__URL", f"postgresql+asyncpg://pbx:{SECRET}@127.0.0.1/pbx")
    settings = load_settings()
    assert settings.ami.password.get_secret_value() == SECRET + "-ami"  # it was read
    for text in (repr(settings), str(settings), repr(settings.ari), str(settings.database)):
        assert SECRET not in text
    assert "**********" in repr(settings)
    assert SECRET not in settings.model_dump_json()


# -- loopback by default ------------------------------------------------------------------


def test_defaults_bind_to_loopback() -> None:
    settings = Settings()
    assert urlsplit(settings.ari.url).hostname == "127.0.0.1"
    assert settings.agi.host == "127.0.0.1"
    assert settings.http.host == "127.0.0.1"
    assert settings.ami.host == "127.0.0.1"
    assert settings.non_loopback_binds() == []


@pytest.mark.parametrize(
    ("agi", "http", "expected"),
    [
        ("0.0.0.0", "127.0.0.1", ["agi.host=0.0.0.0"]),
        ("127.0.0.1", "0.0.0.0", ["http.host=0.0.0.0"]),
        ("::", "192.0.2.10", ["agi.host=::", "http.host=192.0.2.10"]),
        ("::1", "localhost", []),
    ],
)
def test_non_loopback_binds(agi: str, http: str, expected: list[str]) -> None:
    settings = Settings(agi=AgiSettings(host=agi), http=HttpSettings(host=http))
    assert settings.non_loopback_binds() == expected


def test_non_loopback_agi_from_the_environment_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PBX_AGI__HOST", "0.0.0.0")
    assert load_settings().non_loopback_binds() == ["agi.host=0.0.0.0"]


def test_settings_are_frozen() -> None:
    settings = Settings(ari=AriSettings(username="x"))
    with pytest.raises(ValueError, match="frozen"):
        settings.ari.username = "y"
