"""Read-only ClickHouse-compatible HTTP endpoint over the embedded chDB.

The store process owns the chDB path (one process per path), so auditors query through
here: the subset of the ClickHouse HTTP interface that clickhouse-connect (sync and async)
and curl use. SQL comes in the `query` parameter and/or the POST body, `database` and
settings in the URL, credentials as Basic auth, `user`/`password` parameters or
X-ClickHouse-User/-Key headers. Answers carry X-ClickHouse-Query-Id, -Summary, -Format and,
on error, X-ClickHouse-Exception-Code with ClickHouse's own code.

Limits are enforced by the engine, not by parsing SQL: every query runs on a chDB handle
whose session was set to max_execution_time / max_result_rows / max_result_bytes and then
`readonly = 1`, which refuses writes, DDL and any attempt to change a setting (code 164).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from store.config import StoreConfig

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# URL parameters that are transport, not engine settings (ClickHouse's HTTP handler eats
# these itself); anything else is a setting, and a read-only session refuses a change.
_TRANSPORT = {
    "query",
    "database",
    "user",
    "password",
    "query_id",
    "session_id",
    "session_timeout",
    "session_check",
    "compress",
    "decompress",
    "default_format",
    "quota_key",
    "buffer_size",
    "wait_end_of_query",
    "client_protocol_version",
    "role",
    "send_progress_in_http_headers",
    "http_headers_progress_interval_ms",
    "enable_http_compression",
    "cancel_http_readonly_queries_on_client_close",
    "database_replicated_enforce_synchronous_settings",
    "output_format_arrow_string_as_string",
}
_FORMAT_RE = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
# Table functions that reach outside the database (files, network, processes): refused
# with ClickHouse's ACCESS_DENIED (497) although readonly=1 alone would allow them.
_OUTSIDE = re.compile(
    r"\b(file|url|urlCluster|s3|s3Cluster|hdfs|executable|remote|remoteSecure|mysql|"
    r"postgresql|jdbc|odbc|sqlite|mongodb|redis|azureBlobStorage|gcs|input|python)\s*\(",
    re.IGNORECASE,
)
ACCESS_DENIED, AUTH_FAILED, READONLY, UNKNOWN = 497, 516, 164, 1002


class ReadOnlyEndpoint:
    """An ASGI app; `pool` clients are chDB handles locked to read-only at creation."""

    def __init__(self, connect: Callable[..., Client], cfg: StoreConfig, pool: int = 2) -> None:
        self.cfg = cfg
        self._connect = connect
        self._free: asyncio.Queue[Client] = asyncio.Queue()
        self._pool = pool
        self._made = 0
        self.metrics: Callable[[], str] | None = None

    def _new_client(self) -> Client:
        # readonly must come last: once set, the session refuses every other change
        return self._connect(
            database=self.cfg.database,
            max_execution_time=self.cfg.max_execution_time,
            max_result_rows=self.cfg.max_result_rows,
            max_result_bytes=self.cfg.max_result_bytes,
            result_overflow_mode="throw",
            readonly=1,
        )

    async def _client(self) -> Client:
        if self._free.empty() and self._made < self._pool:
            self._made += 1
            return await asyncio.to_thread(self._new_client)
        return await self._free.get()

    def close(self) -> None:
        while not self._free.empty():
            with contextlib.suppress(Exception):
                self._free.get_nowait().close()

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        path = scope["path"]
        if path == "/ping" or (
            path == "/" and scope["method"] == "GET" and not scope["query_string"]
        ):
            await _reply(send, 200, b"Ok.\n", {})
            return
        if path == "/metrics" and self.metrics is not None:
            await _reply(send, 200, self.metrics().encode(), {"content-type": "text/plain"})
            return
        if path != "/":
            await _error(send, 404, UNKNOWN, f"no handler for {path}", "")
            return
        await self._query(scope, body, send)

    async def _query(self, scope: Scope, body: bytes, send: Send) -> None:
        params = dict(parse_qsl(scope["query_string"].decode(), keep_blank_values=True))
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        query_id = params.get("query_id") or str(uuid.uuid4())
        if not self._authorised(params, headers):
            await _error(
                send,
                401,
                AUTH_FAILED,
                "Code: 516. DB::Exception: auditor: Authentication failed: password is "
                "incorrect, or there is no user with such name. (AUTHENTICATION_FAILED)",
                query_id,
            )
            return
        if headers.get("content-encoding") or params.get("query", "").lstrip()[:6].upper() == (
            "INSERT"
        ):
            # clickhouse-connect compresses request bodies only for inserts (SQL plus Native
            # data in one lz4/zstd body); queries come uncompressed. Either way: a write.
            await _error(
                send,
                403,
                READONLY,
                "Code: 164. DB::Exception: auditor: Cannot execute query in readonly mode. "
                "(READONLY)",
                query_id,
            )
            return
        sql = (
            params.get("query", "")
            + ("\n" if params.get("query") and body else "")
            + body.decode("utf-8", "replace")
        ).strip()
        for key, value in params.items():
            if key not in _TRANSPORT and not key.startswith("param_"):
                await _error(
                    send,
                    403,
                    READONLY,
                    f"Code: 164. DB::Exception: Cannot modify '{key}' setting "
                    f"(to {value!r}) in readonly mode. (READONLY)",
                    query_id,
                )
                return
        if _OUTSIDE.search(sql):
            await _error(
                send,
                403,
                ACCESS_DENIED,
                "Code: 497. DB::Exception: auditor: table functions that read "
                "files, URLs or other servers are not allowed here. (ACCESS_DENIED)",
                query_id,
            )
            return
        fmt_match = _FORMAT_RE.search(sql)
        fmt = fmt_match.group(1) if fmt_match else params.get("default_format", "TabSeparated")
        if not fmt_match:
            sql = f"{sql}\nFORMAT {fmt}"
        binds = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        if binds:
            sql = _bind(sql, binds)
        client = await self._client()
        t = time.perf_counter()
        try:
            out = await asyncio.to_thread(
                client.raw_query,
                sql,
                use_database=True,
            )
        except DatabaseError as e:
            code = getattr(e, "code", None) or UNKNOWN
            await _error(
                send,
                500 if code not in (READONLY, 62, 60, 47) else 400,
                int(code),
                _message(str(e)),
                query_id,
            )
            return
        finally:
            self._free.put_nowait(client)
        elapsed = time.perf_counter() - t
        summary = {
            "read_rows": "0",
            "read_bytes": "0",
            "written_rows": "0",
            "written_bytes": "0",
            "total_rows_to_read": "0",
            "result_rows": "0",
            "result_bytes": str(len(out)),
            "elapsed_ns": str(int(elapsed * 1e9)),
        }
        await _reply(
            send,
            200,
            out,
            {
                "content-type": _content_type(fmt),
                "x-clickhouse-query-id": query_id,
                "x-clickhouse-format": fmt,
                "x-clickhouse-timezone": "UTC",
                "x-clickhouse-summary": json.dumps(summary),
            },
        )

    def _authorised(self, params: dict[str, str], headers: dict[str, str]) -> bool:
        user = headers.get("x-clickhouse-user") or params.get("user")
        password = headers.get("x-clickhouse-key") or params.get("password", "")
        auth = headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            with contextlib.suppress(ValueError):
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        expected = self.cfg.auditors.get(user or "")
        return expected is not None and secrets.compare_digest(expected, password)


_PARAM_RE = re.compile(r"\{(\w+):([^{}]+)\}")


def _bind(sql: str, binds: dict[str, str]) -> str:
    """Server-side query parameters as typed literals.

    chDB on a read-only session returns no rows for `{name:Type}` parameters (it applies
    them as settings), so they are substituted here: CAST of a quoted string literal, the
    same text-to-type conversion ClickHouse's HTTP handler does."""

    def lit(m: re.Match[str]) -> str:
        name, typ = m.group(1), m.group(2).strip()
        if name not in binds:
            return m.group(0)
        value = binds[name]
        if typ == "Identifier":
            return "`" + value.replace("`", "``") + "`"
        quoted = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return f"CAST({quoted} AS {typ})"

    return _PARAM_RE.sub(lit, sql)


def _message(text: str) -> str:
    i = text.find("Code: ")
    return (text[i:] if i >= 0 else text).split("\n")[0].strip()


def _content_type(fmt: str) -> str:
    if fmt.startswith("JSON"):
        return "application/json; charset=UTF-8"
    if fmt in ("Native", "RowBinary", "Arrow", "Parquet", "ArrowStream"):
        return "application/octet-stream"
    return "text/plain; charset=UTF-8"


async def _reply(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    hdrs = [(k.encode(), v.encode()) for k, v in headers.items()]
    hdrs.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, status: int, code: int, message: str, query_id: str) -> None:
    await _reply(
        send,
        status,
        (message + "\n").encode(),
        {
            "content-type": "text/plain; charset=UTF-8",
            "x-clickhouse-exception-code": str(code),
            "x-clickhouse-query-id": query_id,
        },
    )


async def serve(
    app: ReadOnlyEndpoint, host: str, port: int, started: asyncio.Event | None = None
) -> None:
    """Serve `app` with uvicorn inside the running loop until cancelled."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="off", access_log=False
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                await task
                raise OSError(f"auditor endpoint could not listen on {host}:{port}")
            await asyncio.sleep(0.02)
        if started is not None:
            started.set()
        await task
    finally:
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 5)
