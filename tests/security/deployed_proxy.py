"""The deployment's reverse proxy, run here: nginx with `deploy/proxy/nginx.conf` itself.

The compose file puts nginx (TLS on 8443) in front of the `api` replicas. Tests run the same server block
file, changed only where a single machine differs from the compose network: the upstream servers (the
replicas' loopback ports instead of the `api` service name), the listen ports, the certificate and log
paths. On nginx older than 1.25.1 (Debian 12 ships 1.22) the `http2 on;` directive is spelled the older
way, `listen ... ssl http2`; the meaning is the same. Each substitution must match exactly once, so a
change to the deployed file that the test no longer understands fails loudly instead of testing a
different proxy. A small main configuration includes the templated file, as the image's
/etc/nginx/nginx.conf includes conf.d/default.conf.
"""

from __future__ import annotations

import re
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.tls_support import self_signed_certificate

DEPLOYED_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "proxy" / "nginx.conf"


def nginx_version() -> tuple[int, ...]:
    done = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=True)
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", done.stderr)
    assert found is not None, done.stderr
    return tuple(int(part) for part in found.groups())


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"deploy/proxy/nginx.conf no longer has exactly one {old!r}"
    return text.replace(old, new)


def templated_config(
    *, upstreams: Sequence[int], port: int, health_port: int, cert: Path, key: Path, access_log: Path
) -> str:
    """The deployed server blocks with this machine's ports and paths (see the module docstring)."""
    text = DEPLOYED_CONFIG.read_text()
    servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=3 fail_timeout=10s;" for p in upstreams)
    text = _replace_once(text, "    server api:8080 max_fails=3 fail_timeout=10s;", servers)
    listen = f"listen 127.0.0.1:{port} ssl"
    if nginx_version() < (1, 25, 1):
        text = _replace_once(text, "    http2 on;\n", "")
        listen += " http2"
    text = _replace_once(text, "listen 8443 ssl;", listen + ";")
    text = _replace_once(text, "listen 127.0.0.1:8081;", f"listen 127.0.0.1:{health_port};")
    text = _replace_once(text, "/etc/nginx/tls/tls.crt", str(cert))
    text = _replace_once(text, "/etc/nginx/tls/tls.key", str(key))
    return _replace_once(text, "/var/log/nginx/access.log", str(access_log))


@dataclass(frozen=True)
class RunningProxy:
    public_url: str
    access_log: Path
    client_tls: ssl.SSLContext

    def upstreams_used(self) -> set[str]:
        """The replicas the proxy sent requests to, from its access log (`upstream=$upstream_addr`)."""
        return set(re.findall(r"upstream=(\S+)", self.access_log.read_text()))


@contextmanager
def running_proxy(
    folder: Path, *, upstreams: Sequence[int], port: int, health_port: int
) -> Iterator[RunningProxy]:
    """nginx in the foreground with the templated deployed config; stopped (SIGQUIT, graceful) after."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed_certificate(
        folder, common_name="veritrace-proxy-test", cert_name="tls.crt", key_name="tls.key"
    )
    access_log = folder / "access.log"
    (folder / "veritrace.conf").write_text(
        templated_config(
            upstreams=upstreams, port=port, health_port=health_port, cert=cert, key=key, access_log=access_log
        )
    )
    temp = folder / "temp"
    temp.mkdir(exist_ok=True)
    main = folder / "nginx.conf"
    main.write_text(
        f"worker_processes 1;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} warn;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        + "".join(
            f"    {kind}_temp_path {temp / kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + f"    include {folder / 'veritrace.conf'};\n}}\n"
    )
    checked = subprocess.run(
        ["nginx", "-t", "-p", str(folder), "-c", str(main)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen(
        ["nginx", "-p", str(folder), "-c", str(main), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_healthy(process, f"http://127.0.0.1:{health_port}/healthz", folder / "error.log")
        tls = ssl.create_default_context(cafile=str(cert))
        yield RunningProxy(f"https://127.0.0.1:{port}", access_log, tls)
    finally:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(process: subprocess.Popen[bytes], url: str, error_log: Path) -> None:
    """The proxy's own health endpoint (the compose healthcheck): healthy once a replica answers."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"nginx exited: {error_log.read_text() if error_log.exists() else ''}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(
        f"nginx did not become healthy: {error_log.read_text() if error_log.exists() else ''}"
    )
