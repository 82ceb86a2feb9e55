"""nats-config/ agrees with the catalog, and the server accepts it."""

from __future__ import annotations

import re
import subprocess

from mesh import provision
from mesh.catalog import BUILTIN, Priority
from mesh.config import NATS_CONFIG_DIR, MeshConfig
from mesh.server import nats_server_binary

ACCOUNTS = (NATS_CONFIG_DIR / "accounts.conf").read_text()
RULE = re.compile(
    r'"tm\.\*\.(\w+)\.\*\.\*\.\*":\s*"tm\.\{\{wildcard\(1\)\}\}\.(\w+)\.\{\{wildcard\(2\)\}\}\.'
    r'\{\{wildcard\(3\)\}\}\.\{\{wildcard\(4\)\}\}\.\{\{partition\((\d+),(\d)\)\}\}"'
)


def test_every_domain_is_partitioned_by_its_catalog_key() -> None:
    rules = {m.group(1): m for m in RULE.finditer(ACCOUNTS)}
    assert set(rules) == set(BUILTIN.domains)
    wildcard_of = {"symbol": "3", "account": "4"}
    for name, domain in BUILTIN.domains.items():
        m = rules[name]
        assert m.group(2) == name
        assert m.group(3) == str(MeshConfig().partitions)
        assert m.group(4) == wildcard_of[domain.partition_by], name


def test_every_service_publishes_only_its_domains() -> None:
    allowed = {
        user: set(re.findall(r'"tm\.\*\.(\w+)\.>"', block))
        for user, block in re.findall(
            r"\{ user: ([\w-]+), password: [\w-]+, permissions: \{(.*?)\} \} \}", ACCOUNTS, re.S
        )
    }
    assert allowed == {
        "trading": {"order", "risk"},
        "portfolio": {"portfolio"},
        "market-data": {"market"},
        "agent": {"agent"},
        "notification": {"notification", "system"},
    }


def test_the_server_accepts_the_config() -> None:
    out = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(NATS_CONFIG_DIR / "server.conf")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


def test_there_is_one_stream_per_priority() -> None:
    defs = provision.load_streams(NATS_CONFIG_DIR)
    assert sorted(d.name for d in defs) == sorted(p.stream for p in Priority)
    assert all(d.desired(1)["subjects"] == [f"tm.{d.priority.value}.>"] for d in defs)
