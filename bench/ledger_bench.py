"""Audit ledger benchmark: appends, proofs and full verification, beside pymerkle's SqliteTree.

Prints one table (Markdown). Run: ``.venv/bin/python bench/ledger_bench.py [--size 1000000]``.
PostgreSQL is used when reachable (a scratch database is created and dropped).

What is measured, for each store:
- single appends/s: ``Ledger.append`` one entry per transaction (pymerkle: ``append_entry``), default
  config (checkpoint every 256 entries, anchored to a directory; appends commit without a flush, each
  checkpoint flushes), plus the same with ``sync_every_append=True``;
- batched appends/s: ``append_many`` in batches of 10,000 (pymerkle: ``append_entries``) while building the
  large log;
- inclusion / consistency proof time at the large size (mean and p99 over random indexes);
- full ``verify()`` of the large log (recompute every leaf and node, check every checkpoint);
- the 1-minute load average before and after each store (the machine is shared), and our append
  rates divided by pymerkle's from the same run. ``--repeat N`` runs everything N times.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit import Ledger, LedgerConfig, upgrade_ledger_schema
from audit.signing import generate_key

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
BATCH = 10_000


def payload(i: int) -> dict[str, object]:
    return {"resource": f"Observation/{i}/_history/1", "digest": f"{i:064x}", "n": i, "score": 0.5}


def entry_bytes(i: int) -> bytes:
    return json.dumps(payload(i), sort_keys=True, separators=(",", ":")).encode()


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def proof_times(fn: Callable[[int], object], size: int, samples: int) -> tuple[float, float]:
    rng = random.Random(7)
    times = []
    for _ in range(samples):
        index = rng.randrange(size)
        start = time.perf_counter()
        fn(index)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.fmean(times), times[int(len(times) * 0.99) - 1]


def bench_ledger(url: str, work: Path, size: int, singles: int) -> dict[str, str]:
    engine = sa.create_engine(url)
    upgrade_ledger_schema(engine)
    config = LedgerConfig(key_dir=work / "keys", anchor_dir=work / "anchor")
    generate_key(config.key_dir, config.origin)
    ledger = Ledger(engine, config)
    row: dict[str, str] = {}
    seconds = timed(
        lambda: [
            ledger.append("fhir.read", "worker:io", payload(i), patient_ref="Patient/1")
            for i in range(singles)
        ]
    )
    row["single appends/s"] = rate(singles, seconds)
    durable = Ledger(engine, config.model_copy(update={"sync_every_append": True}))
    seconds = timed(
        lambda: [
            durable.append("fhir.read", "worker:io", payload(i), patient_ref="Patient/1")
            for i in range(singles // 2)
        ]
    )
    row["single appends/s, flushed each"] = rate(singles // 2, seconds)
    remaining = size - ledger.size()
    start = time.perf_counter()
    while remaining > 0:
        n = min(BATCH, remaining)
        base = size - remaining
        ledger.append_many(
            [{"kind": "model.invoked", "actor": "worker:gpu", "payload": payload(base + i)} for i in range(n)]
        )
        remaining -= n
    build = time.perf_counter() - start
    row["batched appends/s"] = rate(size - 2 * singles + singles // 2, build)
    checkpoint = ledger.checkpoint()
    mean, p99 = proof_times(lambda i: ledger.inclusion_proof(i, checkpoint.size), checkpoint.size, 2000)
    row["inclusion proof ms (mean / p99)"] = f"{mean:.2f} / {p99:.2f}"
    mean, p99 = proof_times(
        lambda i: ledger.consistency_proof(max(i, 1), checkpoint.size), checkpoint.size, 500
    )
    row["consistency proof ms (mean / p99)"] = f"{mean:.2f} / {p99:.2f}"
    report = ledger.verify()
    assert report.ok, report.problem
    row["full verify s"] = f"{report.seconds:.1f}"
    row["size"] = f"{ledger.size():,}"
    engine.dispose()
    return row


def bench_pymerkle(work: Path, size: int, singles: int) -> dict[str, str]:
    from pymerkle import SqliteTree

    tree = SqliteTree(str(work / "pymerkle.db"))
    row: dict[str, str] = {}
    seconds = timed(lambda: [tree.append_entry(entry_bytes(i)) for i in range(singles)])
    row["single appends/s"] = rate(singles, seconds)
    row["single appends/s, flushed each"] = row["single appends/s"] + " (always flushed)"
    remaining = size - singles
    start = time.perf_counter()
    while remaining > 0:
        n = min(BATCH, remaining)
        base = size - remaining
        tree.append_entries([entry_bytes(base + i) for i in range(n)])
        remaining -= n
    row["batched appends/s"] = rate(size - singles, time.perf_counter() - start)
    first = timed(lambda: tree.prove_inclusion(size // 2 + 1))
    mean, p99 = proof_times(lambda i: tree.prove_inclusion(i + 1), size, 200)
    row["inclusion proof ms (mean / p99)"] = f"{mean:.2f} / {p99:.2f} (first: {first * 1000:,.0f})"
    mean, p99 = proof_times(lambda i: tree.prove_consistency(max(i, 1), size), size, 50)
    row["consistency proof ms (mean / p99)"] = f"{mean:.2f} / {p99:.2f}"
    row["full verify s"] = "n/a (no verify)"
    row["size"] = f"{tree.get_size():,}"
    return row


RATIOS = ("single appends/s", "single appends/s, flushed each", "batched appends/s")


def _number(cell: str) -> float:
    return float(cell.split()[0].replace(",", ""))


def _with_load(fn: Callable[[], dict[str, str]]) -> dict[str, str]:
    """Run one store's measurements and note the 1-minute load average before and after them."""
    before = os.getloadavg()[0]
    row = fn()
    row["load average (1 min), before / after"] = f"{before:.1f} / {os.getloadavg()[0]:.1f}"
    return row


def run_once(size: int, singles: int, postgres: bool) -> dict[str, dict[str, str]]:
    """All stores back to back in one process: ours on SQLite, ours on PostgreSQL, then pymerkle."""
    columns: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "sqlite").mkdir()
        columns["Ledger · SQLite"] = _with_load(
            lambda: bench_ledger(f"sqlite:///{work / 'sqlite' / 'ledger.db'}", work / "sqlite", size, singles)
        )
        print("sqlite done", file=sys.stderr)
        if postgres:
            name = f"vt_bench_{secrets.token_hex(4)}"
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            try:
                (work / "pg").mkdir()
                url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
                columns["Ledger · PostgreSQL"] = _with_load(
                    lambda: bench_ledger(url, work / "pg", size, singles)
                )
            finally:
                with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            print("postgres done", file=sys.stderr)
        pymerkle = _with_load(lambda: bench_pymerkle(work, size, singles))
    for row in columns.values():
        for metric in RATIOS:
            row[f"{metric} ÷ pymerkle's"] = f"{_number(row[metric]) / _number(pymerkle[metric]):.2f}x"
    columns["pymerkle 7.0 SqliteTree"] = pymerkle
    return columns


def print_table(columns: dict[str, dict[str, str]]) -> None:
    names = list(columns)
    metrics = list(columns[names[0]])
    print(f"| metric | {' | '.join(names)} |")
    print(f"|---|{'---|' * len(names)}")
    for metric in metrics:
        print(f"| {metric} | {' | '.join(columns[n].get(metric, '') for n in names)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--singles", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=1, help="whole runs, one table each")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    for run in range(args.repeat):
        if args.repeat > 1:
            print(f"\nRun {run + 1} of {args.repeat}\n")
        print_table(run_once(args.size, args.singles, not args.no_postgres))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
