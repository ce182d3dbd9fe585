"""Runs the page in headless Chromium through `driver.mjs` (playwright-core)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

__all__ = ["Browser"]

HERE = Path(__file__).parent


class Browser:
    """A Node process driving Chromium; its console goes to ``log_path``."""

    def __init__(self, url: str, env: dict[str, str], log_path: Path) -> None:
        self.url = url
        self.env = env
        self.log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the driver; it opens the page and keeps it open."""
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed: run scripts/setup")
        if not (HERE / "node_modules" / "playwright-core").is_dir():
            raise RuntimeError("playwright-core is missing: run scripts/setup (npm ci in e2e/)")
        log = self.log_path.open("wb")
        self._proc = await asyncio.create_subprocess_exec(
            node,
            str(HERE / "driver.mjs"),
            self.url,
            env=self.env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
        log.close()

    @property
    def exited(self) -> int | None:
        """The driver's exit code, or None while it runs."""
        return None if self._proc is None else self._proc.returncode

    async def stop(self) -> None:
        """Close the page and the browser (the driver cleans its profile directory)."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
