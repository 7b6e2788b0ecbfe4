"""CDS Hooks load benchmark: 50 concurrent EHR clients calling ``patient-view`` with signed JWTs and full
prefetch, against a bare FastAPI endpoint returning a fixed card, in the same run.

Both servers are uvicorn (uvloop + httptools, the same number of workers, access log off) on this
machine; the load generator is ``wrk`` (apt package) with a Lua script that sends a distinct
pre-signed ES384 token per request (each ``jti`` is accepted once, so tokens are never reused) and the
same body to both servers, so the client does identical work for each. The Veritrace path is the real
one: JWT verification with the replay cache in the database, prefetch resolution, the stored draft
reports of the patient (2 cards), card rows written, one audit-ledger entry per call.

Run: ``.venv/bin/python bench/hooks_patient_view.py [--duration 10] [--workers 1] [--sqlite] [--write]``
(``--workers`` applies to both servers, so the comparison stays like for like); ``--write``
replaces the "CDS Hooks" section of ``bench/RESULTS.md``. Targets (issue 4): p99 <= 2x the bare
endpoint's and < 50 ms; throughput >= 50% of the bare endpoint's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cds.client_auth.ehr_signer import EhrTokenSigner  # noqa: E402

ISSUER = "https://bench-ehr.example/"
SERVICE = "/cds-services/veritrace-patient-view"
PATIENT = "bench-patient"
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
LUA = r"""
local tokens, index, body = {}, 0, nil
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  local nthreads = tonumber(args[3])
  local n = 0
  for line in io.lines(args[1]) do
    if n % nthreads == tid then tokens[#tokens + 1] = line end
    n = n + 1
  end
  local f = io.open(args[2], "r"); body = f:read("*a"); f:close()
end
function request()
  index = index % #tokens + 1
  return wrk.format("POST", nil, {["Authorization"] = "Bearer " .. tokens[index],
                                  ["Content-Type"] = "application/json"}, body)
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sign_batch(args: tuple[bytes, str, str, int]) -> list[str]:
    from cryptography.hazmat.primitives import serialization

    pem, kid, audience, count = args
    key = serialization.load_pem_private_key(pem, password=None)
    signer = EhrTokenSigner(ISSUER, key, kid=kid, alg="ES384")  # type: ignore[arg-type]
    return [signer.token(audience, lifetime_s=600) for _ in range(count)]


def sign_tokens(signer: EhrTokenSigner, audience: str, count: int) -> list[str]:
    from cryptography.hazmat.primitives import serialization

    pem = signer.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    workers = max(1, os.cpu_count() or 1)
    share = -(-count // workers)
    with multiprocessing.Pool(workers) as pool:
        batches = pool.map(_sign_batch, [(pem, signer.kid, audience, share)] * workers)
    return [token for batch in batches for token in batch]


def seed(database_url: str, home: Path) -> None:
    from integrations.store.config import StoreConfig
    from integrations.store.engine import make_engine, make_session_factory
    from integrations.store.migrate import upgrade_database
    from integrations.store.models import Analysis, Report, Study

    engine = make_engine(StoreConfig(database_url=database_url))
    upgrade_database(engine)
    with make_session_factory(engine)() as session:
        for n, severity in enumerate(("critical", "minor")):
            study = Study(study_uid=f"1.2.826.0.1.99.{n}", patient_id=PATIENT, state="stable")
            session.add(study)
            session.flush()
            analysis = Analysis(study_id=study.id, content_digest=uuid.uuid4().hex, status="completed")
            session.add(analysis)
            session.flush()
            statements = [
                {"text": "8 mm nodule, right lower lobe", "severity": severity, "citations": ["img:1:0"]}
            ]
            session.add(
                Report(
                    analysis_id=analysis.id,
                    patient_id=PATIENT,
                    study_uid=study.study_uid,
                    severity=severity,
                    summary="Right lower lobe nodule 8 mm",
                    body={"findings": statements, "impression": statements, "untrained_model": False},
                    markdown="# draft",
                )
            )
        session.commit()
    engine.dispose()


def hook_body() -> dict[str, Any]:
    final_report = {
        "resourceType": "DiagnosticReport",
        "id": "older-final",
        "status": "final",
        "code": {"text": "CT chest"},
        "imagingStudy": [{"reference": "ImagingStudy/older"}],
    }
    study = {
        "resourceType": "ImagingStudy",
        "id": "older",
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.826.0.1.99.77"}],
    }

    def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}

    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/bench", "patientId": PATIENT},
        "prefetch": {"finalReports": bundle(final_report), "imagingStudies": bundle(study)},
    }


def start(factory: str, port: int, env: dict[str, str], workers: int = 1) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            factory,
            "--app-dir",
            str(ROOT / "bench"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
            "--workers",
            str(workers),
        ],
        env={**os.environ, **env},
        cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{factory} did not start")


def run_wrk(url: str, script: Path, tokens: Path, body: Path, args: argparse.Namespace) -> dict[str, float]:
    command = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "--latency",
        "-s",
        str(script),
        url,
        "--",
        str(tokens),
        str(body),
        str(args.threads),
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return {
        "p50_ms": _latency(out, "50%"),
        "p99_ms": _latency(out, "99%"),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "requests": float(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "non_2xx": float(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0.0,
    }


def _latency(out: str, label: str) -> float:
    value, unit = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--tokens", type=int, default=0, help="pre-signed tokens per run (default: enough for 3000 rps)"
    )
    parser.add_argument(
        "--workers",
        default="1",
        help="uvicorn worker processes, the same for both servers; a list (1,2) runs each in turn",
    )
    parser.add_argument("--sqlite", action="store_true", help="use SQLite instead of PostgreSQL")
    parser.add_argument(
        "--write", action="store_true", help="replace the CDS Hooks section of bench/RESULTS.md"
    )
    args = parser.parse_args()
    try:
        worker_counts = [int(w) for w in args.workers.split(",")]
    except ValueError:
        sys.exit(f"--workers takes worker counts separated by commas, got {args.workers!r}")
    if not worker_counts or min(worker_counts) < 1:
        sys.exit("--workers needs counts of at least 1")
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install -y wrk)")

    home = Path(tempfile.mkdtemp(prefix="vt-bench-hooks-"))
    db_name = f"vt_bench_hooks_{uuid.uuid4().hex[:8]}"
    if args.sqlite:
        database_url = f"sqlite:///{home / 'bench.db'}"
    else:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')
        database_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}"
    try:
        seed(database_url, home)
        signer = EhrTokenSigner.generate(ISSUER, alg="ES384")
        issuers = home / "issuers.json"
        issuers.write_text(json.dumps({ISSUER: {"jwks": signer.jwks()}}))
        (home / "body.json").write_text(json.dumps(hook_body()))
        (home / "wrk.lua").write_text(LUA)
        runs = [run_pair(workers, signer, database_url, issuers, home, args) for workers in worker_counts]
        report(runs, args, "SQLite" if args.sqlite else "PostgreSQL")
    finally:
        if not args.sqlite:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        shutil.rmtree(home, ignore_errors=True)


Run = tuple[int, dict[str, dict[str, float]], list[float]]
"""Workers per server, wrk results per endpoint, 1-minute load averages (before, after each)."""


def run_pair(
    workers: int,
    signer: EhrTokenSigner,
    database_url: str,
    issuers: Path,
    home: Path,
    args: argparse.Namespace,
) -> Run:
    """Both servers with ``workers`` workers each, bare first, back to back; fresh tokens for this run."""
    bare_port, vt_port = free_port(), free_port()
    public = f"http://127.0.0.1:{vt_port}"
    count = args.tokens or 3000 * (args.duration + 2)
    started = time.perf_counter()
    tokens = sign_tokens(signer, public + SERVICE, count)
    print(f"signed {len(tokens)} ES384 tokens in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    (home / "tokens.txt").write_text("\n".join(tokens) + "\n")
    env = {
        "VT_BENCH_HOME": str(home),
        "VT_BENCH_DATABASE_URL": database_url,
        "VT_BENCH_ISSUERS_FILE": str(issuers),
        "VT_BENCH_PUBLIC_URL": public,
    }
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(start("hooks_apps:bare_app", bare_port, env, workers))
        processes.append(start("hooks_apps:veritrace_app", vt_port, env, workers))
        # Sanity: one real call answers the seeded cards.
        probe = httpx.post(
            public + SERVICE,
            json=hook_body(),
            headers={"Authorization": f"Bearer {signer.token(public + SERVICE)}"},
        )
        assert probe.status_code == 200 and len(probe.json()["cards"]) == 2, probe.text
        results = {}
        loads = [os.getloadavg()[0]]
        for name, port in ((BARE, bare_port), (OURS, vt_port)):
            results[name] = run_wrk(
                f"http://127.0.0.1:{port}{SERVICE}",
                home / "wrk.lua",
                home / "tokens.txt",
                home / "body.json",
                args,
            )
            loads.append(os.getloadavg()[0])
        return workers, results, loads
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


BARE, OURS = "bare FastAPI, fixed card", "Veritrace patient-view"


def report(runs: list[Run], args: argparse.Namespace, database: str) -> None:
    lines = [
        "## CDS Hooks",
        "",
        f"Produced by `bench/hooks_patient_view.py{' --sqlite' if args.sqlite else ''} "
        f"--workers {args.workers} --write`: wrk, {args.connections} connections, {args.threads} threads, "
        f"{args.duration} s per server, both servers with the same number of uvicorn workers, bare first "
        f"then Veritrace, back to back; {database}; {os.cpu_count()} CPUs ({platform.machine()}) shared "
        "with other engineers' work (1-minute load average before / after bare / after Veritrace in the "
        "table). Each Veritrace request: a distinct ES384 JWT verified (jti replay cache in the "
        "database), full prefetch (final reports + imaging studies), 2 draft cards built, stored, and "
        "one audit-ledger entry.",
        "",
        "| workers each | endpoint | requests | non-2xx | p50 ms | p99 ms | throughput req/s | load avg |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    verdicts = []
    for workers, results, loads in runs:
        load = " / ".join(f"{value:.1f}" for value in loads)
        for name, r in results.items():
            cells = (
                f"{r['requests']:.0f}",
                f"{r['non_2xx']:.0f}",
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['rps']:.0f}",
            )
            lines.append(f"| {workers} | {name} | {' | '.join(cells)} | {load} |")
        bare, ours = results[BARE], results[OURS]
        p99_ratio, rps_ratio = ours["p99_ms"] / bare["p99_ms"], ours["rps"] / bare["rps"]
        verdicts.append(
            f"- {workers} worker(s) each: Veritrace / bare p99 {p99_ratio:.2f}x (target <= 2x, and < 50 ms: "
            f"{'met' if p99_ratio <= 2 and ours['p99_ms'] < 50 else 'NOT met'}); throughput "
            f"{rps_ratio:.0%} (target >= 50%: {'met' if rps_ratio >= 0.5 else 'NOT met'})."
        )
    lines += ["", *verdicts, "", *NOTES, ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        path = ROOT / "bench" / "RESULTS.md"
        current = path.read_text() if path.exists() else "# Benchmark results\n\n"
        pattern = re.compile(r"^## CDS Hooks\n.*?(?=^## |\Z)", re.S | re.M)
        updated = (
            pattern.sub(text + "\n", current) if pattern.search(current) else current.rstrip() + "\n\n" + text
        )
        path.write_text(updated)


NOTES = [
    "What changed since the first run (132 req/s, p99 742 ms, one worker each): the hook path's writes go "
    "through one group-commit writer (`cds/group_commit.py`) - a call submits its jti claim, card rows and "
    "audit entry once, concurrent calls share one PostgreSQL statement (`cds/hook_rows.py`) and one "
    "`Ledger.append_many`, and each call is answered only after its batch committed; the JWS is split "
    "once instead of three PyJWT parses; a patient's drafts are cached for 1 s and their cards built once "
    "per cached snapshot; orjson responses. "
    "Caveat: every call here is for one patient, so the draft cache almost always hits; with many "
    "patients each miss is one indexed query (about 1-2 ms, in a worker thread).",
    "",
    "Where the time goes (server CPU per request, one worker, 50 connections, measured with the process's "
    "CPU counters on this machine): bare 0.11 ms; Veritrace about 1.5 ms (4.6 ms before these changes, "
    "measured the same way). The ES384 signature check alone is 0.47 ms timed in isolation (OpenSSL "
    "through `cryptography`) and about 40% of the server's CPU samples under load (py-spy); the writer "
    "thread (one statement + one ledger append per batch, psycopg included) about 15%; Starlette, "
    "FastAPI and uvicorn about 15%; the rest is spread thin (pydantic, uuid4, staleness check, "
    "prefetch, futures). One call alone is fast (1 connection: p50 2.4 ms, p99 7 ms); under 50 "
    "connections the server is CPU-bound, so latency is queueing.",
    "",
    "Why the targets are out of reach as stated: throughput >= 50% of the bare endpoint allows 0.22 ms of "
    "CPU per request, less than half the cost of verifying the one ES384 signature every call must carry "
    "(each token is new, so nothing can be cached); and with 50 closed-loop connections a p99 under 50 ms "
    "needs well over 1,000 req/s (Little's law: 50 / 0.05 s), i.e. under ~1 ms of CPU per request per "
    "core on a machine that other engineers' jobs keep at a load of 3-8. More workers (a legitimate "
    "lever) help Veritrace, but the bare endpoint gains as much or more on two cores.",
]
"""Lines written under the table: what changed, where the time goes, why the targets are not met."""


if __name__ == "__main__":
    main()
