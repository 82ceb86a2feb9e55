"""This part's `mesh` sub-commands (wired in by node/cli.py): `mesh gateway`,
`mesh gateway-token` (development tokens) and `mesh bench gateway`."""

from __future__ import annotations

import argparse
import json
import sys
import time

from gateway import config as gconfig
from mesh.cli import SubParsers
from mesh.client import Mesh
from mesh.config import MeshConfig


async def cmd_gateway(args: argparse.Namespace, cfg: MeshConfig) -> int:
    from gateway import server

    settings = gconfig.load(args.gateway_config)
    if args.host:
        settings.host = args.host
    if args.port is not None:
        settings.port = args.port
    if args.reuse_port:
        settings.reuse_port = True
    if args.instance:
        settings.instance = args.instance
    if args.server:
        settings.server = args.server
    url = args.url or cfg.nats.url or f"nats://{cfg.nats.host}:{cfg.nats.port}"
    user = args.user or cfg.nats.user
    password = args.password if args.user else cfg.nats.password
    async with Mesh.connect(url, service="gateway", user=user, password=password,
                            catalog=cfg.build_catalog()) as mesh:
        return await server.run(settings, mesh, cfg.build_catalog())


async def cmd_token(args: argparse.Namespace, cfg: MeshConfig) -> int:
    import jwt

    settings = gconfig.load(args.gateway_config)
    if not settings.auth.hs256_secret:
        print("mesh: gateway-token needs auth.hs256_secret in the gateway config")
        return 2
    now = int(time.time())
    claims = {"sub": args.sub, "roles": args.role, "iat": now, "exp": now + args.ttl,
              "iss": settings.auth.issuer, "aud": settings.auth.audience}
    if args.account:
        claims["account"] = args.account
    tok = jwt.encode(claims, settings.auth.hs256_secret, algorithm="HS256",
                     headers={"kid": "dev"})
    print(tok)
    return 0


async def cmd_bench(args: argparse.Namespace, cfg: MeshConfig) -> int:
    from gateway import bench
    from mesh.bench import host

    probe = await host.probe_ms()
    try:
        result = await bench.run(args)
    except bench.GoMissing as e:
        print(e, file=sys.stderr)
        return 2
    print(json.dumps({**result, "host_probe_ms": probe}), flush=True)
    return 0


def register(commands: SubParsers, benches: SubParsers) -> None:
    g = commands.add_parser("gateway", help="WebSocket gateway (Uvicorn or Hypercorn)")
    g.add_argument("--gateway-config", help="gateway.toml (see docs/gateway.md)")
    g.add_argument("--host")
    g.add_argument("--port", type=int)
    g.add_argument("--reuse-port", action="store_true", help="SO_REUSEPORT: share the port")
    g.add_argument("--instance", help="name shown to clients in status frames")
    g.add_argument("--server", choices=["hypercorn", "uvicorn"], help="ASGI server")
    g.set_defaults(fn=cmd_gateway)

    t = commands.add_parser("gateway-token", help="a development JWT (HS256 dev secret)")
    t.add_argument("--gateway-config")
    t.add_argument("--sub", default="dev")
    t.add_argument("--role", action="append", default=[], help="repeatable")
    t.add_argument("--account", action="append", default=[])
    t.add_argument("--ttl", type=int, default=3600)
    t.set_defaults(fn=cmd_token)

    b = benches.add_parser("gateway", help="N WebSocket clients under a mixed load")
    b.add_argument("--clients", type=int, default=1000)
    b.add_argument("--client", choices=["go", "python"], default="go",
                   help="the load generator: gateway/bench_client_go/ (needs Go; built "
                   "for the run) or gateway/bench_client.py")
    b.add_argument("--procs", type=int, default=0,
                   help="client processes (default: go 2; python 2-8 by --clients)")
    b.add_argument("--client-gomaxprocs", type=int, default=0,
                   help="GOMAXPROCS of each go client process (default: the client's own, 1)")
    b.add_argument("--seconds", type=float, default=15.0)
    b.add_argument("--rate", type=int, default=0,
                   help="published events/s (mixed); each reaches ~92%% of the clients "
                   "(default: 60 x 1,000 / clients, at least 1: ~55,000 deliveries/s)")
    b.add_argument("--symbols", type=int, default=20)
    defaults = gconfig.GatewaySettings()
    b.add_argument("--server", choices=["hypercorn", "uvicorn"], default=defaults.server)
    b.add_argument("--gateway-procs", type=int, default=2,
                   help="gateway processes sharing the port (SO_REUSEPORT); default 2, "
                   "one per core")
    b.add_argument("--flush-ms", type=float, default=defaults.flush_ms,
                   help="gateway flush_ms")
    b.add_argument("--client-sched", choices=["other", "batch"], default="other",
                   help="Linux scheduling policy of the client processes (batch: no "
                        "wake-up preemption of the gateway; docs/gateway.md)")
    b.add_argument("--inflight", type=int, default=100,
                   help="handshakes in flight per client process")
    b.set_defaults(fn=cmd_bench)
