"""Runs the test IdP (deploy/oidc, panva/oidc-provider on Node.js) as a real process on a free port."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

IDP_DIR = Path(__file__).resolve().parents[2] / "deploy" / "oidc"
CLIENT_ID = "veritrace-review"
CLIENT_SECRET = "test-only-client-secret"


@dataclass(frozen=True)
class RunningIdp:
    issuer: str
    redirect_uri: str


def install_idp() -> None:
    """``npm ci`` from the committed lock file, once per checkout (node_modules is git-ignored)."""
    if not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=IDP_DIR,
            check=True,
            capture_output=True,
            timeout=300,
        )


@contextmanager
def running_idp(port: int, redirect_uri: str) -> Iterator[RunningIdp]:
    install_idp()
    env = {
        **os.environ,
        "PORT": str(port),
        "REDIRECT_URI": redirect_uri,
        "CLIENT_ID": CLIENT_ID,
        "CLIENT_SECRET": CLIENT_SECRET,
    }
    process = subprocess.Popen(
        ["node", "server.js"], cwd=IDP_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    issuer = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(issuer + "/.well-known/openid-configuration", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                raise RuntimeError(f"test IdP did not start: {output[-2000:]}")
            time.sleep(0.1)
        yield RunningIdp(issuer=issuer, redirect_uri=redirect_uri)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
