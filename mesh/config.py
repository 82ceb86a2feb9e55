"""Node configuration: `mesh.toml` (optional) plus environment overrides.

Every field has an embedded default, so `mesh up` runs with no file at all. The file is
decoded into typed Structs: a typo or a wrong type is reported with its path.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

import msgspec

from mesh.catalog import BUILTIN, Catalog, Domain, EventTypeSpec
from mesh.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
NATS_CONFIG_DIR = REPO_ROOT / "nats-config"


class NatsSettings(msgspec.Struct, forbid_unknown_fields=True):
    # Empty: start the embedded nats-server. Otherwise one or more comma-separated URLs.
    url: str = ""
    user: str = "mesh"
    password: str = "mesh-dev"
    host: str = "127.0.0.1"
    port: int = 4222
    monitor_port: int = 8222
    data_dir: str = ".mesh/nats"
    config_dir: str = str(NATS_CONFIG_DIR)
    replicas: int = 1
    connect_timeout: float = 5.0
    # How long a publish waits for its PubAck before it re-sends (same Nats-Msg-Id).
    ack_timeout: float = 2.0
    # How long a publish keeps retrying through a reconnect before it gives up.
    publish_deadline: float = 30.0


class TracingSettings(msgspec.Struct, forbid_unknown_fields=True):
    exporter: Literal["none", "console", "otlp"] = "none"
    endpoint: str = ""  # OTLP/HTTP, e.g. http://127.0.0.1:4318/v1/traces
    service_name: str = ""


class CatalogSettings(msgspec.Struct, forbid_unknown_fields=True):
    types: list[EventTypeSpec] = msgspec.field(default_factory=list)
    domains: list[Domain] = msgspec.field(default_factory=list)


class MeshConfig(msgspec.Struct, forbid_unknown_fields=True):
    service: str = "mesh"
    partitions: int = 8
    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    tracing: TracingSettings = msgspec.field(default_factory=TracingSettings)
    catalog: CatalogSettings = msgspec.field(default_factory=CatalogSettings)

    def build_catalog(self) -> Catalog:
        return BUILTIN.extended(self.catalog.types, self.catalog.domains)


_ENV: dict[str, tuple[str, str]] = {
    "MESH_SERVICE": ("", "service"),
    "MESH_NATS_URL": ("nats", "url"),
    "MESH_NATS_USER": ("nats", "user"),
    "MESH_NATS_PASSWORD": ("nats", "password"),
    "MESH_NATS_PORT": ("nats", "port"),
    "MESH_NATS_DATA_DIR": ("nats", "data_dir"),
    "MESH_TRACING_EXPORTER": ("tracing", "exporter"),
    "MESH_TRACING_ENDPOINT": ("tracing", "endpoint"),
}


def load(path: str | Path | None = None, env: dict[str, str] | None = None) -> MeshConfig:
    """Config from `path` (or $MESH_CONFIG, or ./mesh.toml if present), then env overrides."""
    env = dict(os.environ) if env is None else env
    raw: dict[str, object] = {}
    chosen = path or env.get("MESH_CONFIG") or ("mesh.toml" if Path("mesh.toml").exists() else None)
    if chosen:
        try:
            raw = tomllib.loads(Path(chosen).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read config {chosen}: {e}") from e
    for var, (section, key) in _ENV.items():
        if var in env:
            target = raw if not section else raw.setdefault(section, {})
            assert isinstance(target, dict)
            target[key] = env[var]
    try:
        cfg = msgspec.convert(raw, MeshConfig, strict=False)
        cfg.build_catalog()
    except msgspec.ValidationError as e:
        raise ConfigError(f"invalid config{f' in {chosen}' if chosen else ''}: {e}") from e
    return cfg
