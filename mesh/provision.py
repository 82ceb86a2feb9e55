"""Declarative streams (nats-config/streams.toml) applied idempotently.

`apply()` compares each stream's desired settings with what the server has:
unchanged -> nothing sent; different and changeable -> one update; different in a way
JetStream cannot change in place (storage, retention, ...) -> ProvisioningError naming the
field, before anything is touched.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec
import nats
from nats.aio.client import Client

from mesh import jsapi, units
from mesh.catalog import Priority
from mesh.config import NATS_CONFIG_DIR
from mesh.errors import ConfigError, ProvisioningError

NS = 1_000_000_000


class StreamDef(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    priority: Priority
    max_age: str = "1d"
    max_bytes: str | int = -1
    discard: Literal["old", "new"] = "old"
    duplicate_window: str = "2m"
    storage: Literal["file", "memory"] = "file"
    max_msg_size: str | int = "1MB"

    def desired(self, replicas: int) -> dict[str, Any]:
        """The JetStream API fields this definition manages."""
        return {
            "subjects": [f"tm.{self.priority.value}.>"],
            "retention": "limits",
            "storage": self.storage,
            "num_replicas": replicas,
            "max_age": int(units.seconds(self.max_age) * NS),
            "max_bytes": units.size(self.max_bytes),
            "max_msg_size": units.size(self.max_msg_size),
            "discard": self.discard,
            "duplicate_window": int(units.seconds(self.duplicate_window) * NS),
            # Last value per symbol straight from the stream (direct get), no side cache.
            "allow_direct": True,
            # Fast batches (mesh/fast_batch.py): one confirmation per batch, for the bridge.
            "allow_batched": True,
        }


# JetStream refuses to change these on an existing stream.
IMMUTABLE = ("storage", "retention")


class StreamFile(msgspec.Struct, forbid_unknown_fields=True):
    stream: list[StreamDef]


class Change(msgspec.Struct, frozen=True):
    stream: str
    action: Literal["created", "updated", "unchanged"]
    fields: tuple[str, ...] = ()


def load_streams(config_dir: str | Path) -> list[StreamDef]:
    path = Path(config_dir) / "streams.toml"
    try:
        raw = tomllib.loads(path.read_text())
        defs = msgspec.convert(raw, StreamFile).stream
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as e:
        raise ConfigError(f"invalid stream definitions in {path}: {e}") from e
    for d in defs:
        d.desired(1)  # durations and sizes are checked now, not at apply time
    missing = set(Priority) - {d.priority for d in defs}
    if missing:
        raise ConfigError(f"{path} defines no stream for {sorted(missing)}")
    return defs


def _differences(current: dict[str, Any], desired: dict[str, Any]) -> list[str]:
    def norm(key: str, v: Any) -> Any:
        if key == "subjects":
            return sorted(v or [])
        if key in ("allow_direct", "allow_batched"):
            return bool(v)
        return v

    return [k for k, v in desired.items() if norm(k, current.get(k)) != norm(k, v)]


async def apply(nc: Client, defs: list[StreamDef], replicas: int = 1) -> list[Change]:
    # Plan every stream first: a refusal for one leaves all of them untouched.
    plan: list[tuple[StreamDef, dict[str, Any], dict[str, Any] | None, list[str]]] = []
    for d in defs:
        desired = d.desired(replicas)
        info = await jsapi.stream_info(nc, d.name)
        current = info["config"] if info is not None else None
        diff = _differences(current, desired) if current is not None else []
        frozen = [k for k in diff if k in IMMUTABLE]
        if current is not None and frozen:
            raise ProvisioningError(
                f"stream {d.name}: JetStream cannot change {', '.join(frozen)} in place "
                f"(server has {', '.join(f'{k}={current.get(k)!r}' for k in frozen)}, "
                f"definition wants {', '.join(f'{k}={desired[k]!r}' for k in frozen)}); "
                "nothing was changed. Keep the old value, or migrate: create a new stream, "
                "copy with a source, then delete the old one."
            )
        plan.append((d, desired, current, diff))

    changes: list[Change] = []
    for d, desired, current, diff in plan:
        if current is None:
            await jsapi.call(nc, f"$JS.API.STREAM.CREATE.{d.name}", {"name": d.name, **desired})
            changes.append(Change(d.name, "created"))
        elif not diff:
            changes.append(Change(d.name, "unchanged"))
        else:
            try:
                await jsapi.call(nc, f"$JS.API.STREAM.UPDATE.{d.name}", {**current, **desired})
            except jsapi.JetStreamApiError as e:
                raise ProvisioningError(
                    f"stream {d.name}: the server refused changing {', '.join(diff)}: "
                    f"{e.description}; this stream was not changed"
                ) from e
            changes.append(Change(d.name, "updated", tuple(diff)))
    return changes


async def apply_to(
    url: str, replicas: int = 1, *, user: str = "mesh", password: str = "mesh-dev"
) -> list[Change]:
    """The project's streams (nats-config/streams.toml) on the server at `url`: what the
    benchmarks and tests run against a server they just started."""
    nc = await nats.connect(url.split(","), user=user, password=password)
    try:
        return await apply(nc, load_streams(NATS_CONFIG_DIR), replicas)
    finally:
        await nc.close()
