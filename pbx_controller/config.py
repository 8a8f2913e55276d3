"""Typed settings: environment variables (PBX_ prefix, `__` between levels),
plus an optional TOML file (`--config` or $PBX_CONFIG). The environment wins
over the file. Secrets are `SecretStr`: they print as '**********'.

    PBX_ARI__URL=http://127.0.0.1:8088/ari
    PBX_ARI__PASSWORD=...
    PBX_DATABASE__URL=postgresql+asyncpg://pbx@127.0.0.1/pbx
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class ConfigError(ValueError):
    """A settings problem, worded for the operator: which key, what is wrong."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AriSettings(_Section):
    url: str = "http://127.0.0.1:8088/ari"
    username: str = "pbx"
    password: SecretStr = SecretStr("")
    app: str = "pbx-controller"
    # Seconds between websocket pings; a dead connection is noticed within ~2x this.
    heartbeat_s: float = Field(default=5.0, gt=0)
    reconnect_max_s: float = Field(default=5.0, gt=0)
    request_timeout_s: float = Field(default=5.0, gt=0)
    # REST requests over the event websocket (Asterisk 20.14/21.9/22.4+):
    # no HTTP request per action; HTTP is used while it is down.
    rest_over_websocket: bool = True

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class AmiSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=5038, ge=1, le=65535)
    username: str = "pbx"
    password: SecretStr = SecretStr("")


class AgiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=4573, ge=1, le=65535)


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8780, ge=0, le=65535)
    # A bearer token for everything but /health and /metrics; None: none
    # asked (loopback only). pbxctl sends it from the same settings.
    token: SecretStr | None = None


class RecordingSettings(_Section):
    # Where finished recordings are kept; default: <data_dir>/recordings.
    dir: Path | None = None
    # Where Asterisk writes live recordings (ARI "stored" recordings): its
    # astspooldir/recording. The controller reads the legs from here.
    spool_dir: Path = Path("/var/spool/asterisk/recording")


class DatabaseSettings(_Section):
    url: SecretStr = SecretStr("sqlite+aiosqlite:///var/pbx.db")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PBX_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    ari: AriSettings = AriSettings()
    ami: AmiSettings = AmiSettings()
    agi: AgiSettings = AgiSettings()
    http: HttpSettings = HttpSettings()
    database: DatabaseSettings = DatabaseSettings()
    recordings: RecordingSettings = RecordingSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    # The greeting played by the bare call flow until a tenant defines its own.
    default_greeting: str = "sound:hello-world"
    data_dir: Path = Path("var")
    # After a stop shorter than this, agents come back logged in as they
    # were; after a longer one (the night), logged out. 0: after every clean
    # stop. A run that died counts as stopped at its last liveness stamp
    # (store.liveness, core.agent.lost_run_logout).
    agents_restore_within_s: int = Field(default=900, ge=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init (the TOML file, passed by load_settings) loses to the environment.
        return (env_settings, init_settings)

    def recordings_dir(self) -> Path:
        return self.recordings.dir or self.data_dir / "recordings"

    def non_loopback_binds(self) -> list[str]:
        """Listeners configured off loopback; the service warns about each."""
        return [
            f"{name}.host={host}"
            for name, host in (("agi", self.agi.host), ("http", self.http.host))
            if host not in _LOOPBACK
        ]


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Settings from the environment and, if given or $PBX_CONFIG is set, a TOML file."""
    path = path or os.environ.get("PBX_CONFIG")
    data: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"settings file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"settings file {path} is not valid TOML: {exc}") from None
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, file=path)) from None
    except SettingsError as exc:
        # e.g. a whole section given as malformed JSON in one variable; the
        # message names the variable, not its value.
        raise ConfigError(f"invalid settings in environment: {exc}") from None


def _from_environment(loc: tuple[str | int, ...]) -> bool:
    """Whether the value at `loc` came from a PBX_ variable (the env wins)."""
    names = [str(part).upper() for part in loc]
    return any(f"PBX_{'__'.join(names[:n])}" in os.environ for n in range(1, len(names) + 1))


def describe_validation_error(
    exc: ValidationError, *, file: str | os.PathLike[str] | None = None
) -> str:
    """One line per source, each problem as `key: what is wrong`. The
    offending value is never echoed: it may be a secret."""
    by_source: dict[str, list[str]] = {}
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        source = "environment" if file is None or _from_environment(error["loc"]) else str(file)
        by_source.setdefault(source, []).append(f"{key}: {error['msg']}")
    return "; ".join(
        f"invalid settings in {source}: " + "; ".join(problems)
        for source, problems in by_source.items()
    )
