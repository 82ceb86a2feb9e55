from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mesh import jsapi, provision
from mesh.client import connect_nats
from mesh.config import NATS_CONFIG_DIR
from mesh.errors import ConfigError, ProvisioningError
from mesh.server import NatsServer


def edited(tmp_path: Path, old: str, new: str) -> Path:
    d = tmp_path / "cfg"
    shutil.copytree(NATS_CONFIG_DIR, d, dirs_exist_ok=True)
    text = (d / "streams.toml").read_text()
    assert old in text
    (d / "streams.toml").write_text(text.replace(old, new, 1))
    return d


async def test_apply_is_idempotent_updates_what_it_can_and_refuses_what_it_cannot(
    fresh_server: NatsServer, tmp_path: Path
) -> None:
    nc = await connect_nats(fresh_server.url)
    try:
        # fresh_server already applied the definitions once.
        again = await provision.apply(nc, provision.load_streams(NATS_CONFIG_DIR))
        assert {c.action for c in again} == {"unchanged"}

        changed = edited(tmp_path, 'max_age = "7d"', 'max_age = "5d"')
        result = await provision.apply(nc, provision.load_streams(changed))
        updated = [c for c in result if c.action == "updated"]
        assert [(c.stream, c.fields) for c in updated] == [("TM_CRITICAL", ("max_age",))]
        info = await jsapi.stream_info(nc, "TM_CRITICAL")
        assert info is not None
        assert info["config"]["max_age"] == 5 * 86400 * 10**9

        frozen = edited(
            tmp_path / "b",
            'name = "TM_HIGH"\npriority = "high"',
            'name = "TM_HIGH"\npriority = "high"\nstorage = "memory"',
        )
        before = await jsapi.stream_info(nc, "TM_HIGH")
        with pytest.raises(ProvisioningError, match=r"TM_HIGH.*storage.*nothing was changed"):
            await provision.apply(nc, provision.load_streams(frozen))
        after = await jsapi.stream_info(nc, "TM_HIGH")
        assert before is not None
        assert after is not None
        assert after["config"] == before["config"]
        # Refused up front: the critical stream before it in the file was not touched either.
        crit = await jsapi.stream_info(nc, "TM_CRITICAL")
        assert crit is not None
        assert crit["config"]["max_age"] == 5 * 86400 * 10**9
    finally:
        await nc.close()


def test_bad_definitions_are_reported(tmp_path: Path) -> None:
    d = edited(tmp_path, 'max_age = "7d"', 'max_age = "7 days"')
    with pytest.raises(ConfigError, match="7 days"):
        provision.load_streams(d)[0].desired(1)
    d = edited(tmp_path / "x", 'discard = "new"', 'discard = "sometimes"')
    with pytest.raises(ConfigError, match="discard"):
        provision.load_streams(d)
