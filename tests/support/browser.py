"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol.

A real browser loads a page from a file, and the test reads back what a person
would see: console errors and uncaught exceptions, the DOM (through JavaScript
evaluated by the test, not by the page), the load time and a PNG screenshot.
The browser runs with a fresh profile, no network services, and is stopped by
its own PID. ``./scripts/test`` installs Chromium; a missing one fails loudly.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--window-size=1280,900",
)


@dataclass
class PageVisit:
    load_seconds: float
    errors: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    screenshot: bytes = b""


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("chromium is not installed: ./scripts/test installs Debian's chromium")
    return found


@contextmanager
def chromium(workdir: Path) -> Iterator[str]:
    """Start Chromium; yield the DevTools HTTP address; stop it by PID."""
    profile = workdir / "chromium-profile"
    profile.mkdir()
    proc = subprocess.Popen(
        [_chromium(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if proc.poll() is not None:
                raise AssertionError(f"chromium exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise AssertionError("chromium did not open its DevTools port in 60 s")
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _visit(devtools: str, url: str, expressions: dict[str, str]) -> PageVisit:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{devtools}/json/list") as resp:
            targets = await resp.json()
        page = next(t for t in targets if t.get("type") == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            ids = iter(range(1, 1_000_000))
            pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
            errors: list[str] = []
            loaded = asyncio.Event()

            async def reader() -> None:
                async for msg in ws:
                    data = json.loads(msg.data)
                    if "id" in data and data["id"] in pending:
                        pending.pop(data["id"]).set_result(data)
                        continue
                    method = data.get("method")
                    params = data.get("params", {})
                    if method == "Page.loadEventFired":
                        loaded.set()
                    elif method == "Runtime.exceptionThrown":
                        errors.append("exception: " + json.dumps(params)[:500])
                    elif method == "Runtime.consoleAPICalled" and params.get("type") in {
                        "error",
                        "assert",
                    }:
                        errors.append("console: " + json.dumps(params.get("args"))[:500])
                    elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                        errors.append("log: " + params["entry"].get("text", "")[:500])

            async def call(method: str, **params: Any) -> dict[str, Any]:
                msg_id = next(ids)
                future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
                pending[msg_id] = future
                await ws.send_json({"id": msg_id, "method": method, "params": params})
                reply = await asyncio.wait_for(future, 60)
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result

            task = asyncio.create_task(reader())
            try:
                for domain in ("Page", "Runtime", "Log"):
                    await call(f"{domain}.enable")
                started = time.monotonic()
                await call("Page.navigate", url=url)
                await asyncio.wait_for(loaded.wait(), 60)
                visit = PageVisit(time.monotonic() - started, errors)
                for name, expression in expressions.items():
                    result = await call(
                        "Runtime.evaluate", expression=expression, returnByValue=True
                    )
                    visit.values[name] = result["result"].get("value")
                shot = await call("Page.captureScreenshot", format="png")
                visit.screenshot = base64.b64decode(shot["data"])
                return visit
            finally:
                task.cancel()


def visit(workdir: Path, page: Path, expressions: dict[str, str]) -> PageVisit:
    """Load ``page`` in a fresh headless Chromium and evaluate ``expressions`` on it."""
    with chromium(workdir) as devtools:
        return asyncio.run(_visit(devtools, page.resolve().as_uri(), expressions))


def png_summary(png: bytes) -> tuple[int, int, int]:
    """(width, height, distinct byte values in the pixel data) of a PNG."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", png[16:24])
    pos, idat = 8, b""
    while pos < len(png):
        length = struct.unpack(">I", png[pos : pos + 4])[0]
        kind = png[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += png[pos + 8 : pos + 8 + length]
        pos += 12 + length
    pixels = zlib.decompress(idat)
    return width, height, len(set(pixels))
