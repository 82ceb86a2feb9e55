"""The live page in a real headless browser (Debian's /usr/bin/chromium driven by
playwright-core from npm; `apt-get install chromium` and `npm install` in
tests/gateway/browser/ if missing -- this test installs the npm part itself)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from mesh.client import Mesh
from mesh.events import Event
from tests.gateway.conftest import GatewayProc, Keys

HERE = Path(__file__).resolve().parent / "browser"


def _ensure_playwright() -> None:
    assert Path("/usr/bin/chromium").exists(), "needs Debian chromium: apt-get install chromium"
    if not (HERE / "node_modules" / "playwright-core").exists():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=HERE, check=True,
                       capture_output=True, timeout=300)


async def test_page_shows_live_ticks(
    gateway: GatewayProc, keys: Keys, mesh: Mesh, tag: str
) -> None:
    await asyncio.to_thread(_ensure_playwright)
    token = keys.token(account=tag)
    proc = await asyncio.create_subprocess_exec(
        "node", str(HERE / "live_page.mjs"), gateway.http + "/", token, tag,
        cwd=HERE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert json.loads(line)["state"] == "connected", line

    async def ticks() -> None:
        n = 0
        while True:
            n += 1
            await mesh.publish(Event(event_type="PRICE_UPDATE", symbol=tag,
                                     payload={"price": 100 + n}))
            await asyncio.sleep(0.1)  # a ticker's pace, not synchronisation

    publisher = asyncio.create_task(ticks())
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        publisher.cancel()
    assert proc.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["state"] == "done"
    assert result["price"] > result["first"] > 100
    assert result["age"].endswith(("ms", "s"))
