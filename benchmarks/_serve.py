"""`studyhall serve` on a free loopback port, for the benchmarks that talk HTTP."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def serve(url: str, *options: str) -> Iterator[str]:
    """`studyhall serve OPTIONS` on a free loopback port until the block ends."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "STUDYHALL_TOKEN"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from studyhall.optimizer.cli import main; main()",
            "serve",
            "--storage",
            url,
            "--port",
            str(port),
            "--log-level",
            "warning",
            *options,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"studyhall serve exited: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("studyhall serve did not answer /healthz within 60 s")
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=15)
