"""FHIR side benchmark against a real sekmet-fhir child process on localhost.

Prints one Markdown table. Run: ``.venv/bin/python bench/fhir_bench.py [--reads 50] [--writes 20]``.

What is measured (wall clock, this machine, one client thread):
- starting ``LocalFhirServer`` until ``/metadata`` answers;
- loading the 3 synthetic patients (first load: three transactions; second load: comparison only, no writes);
- ``read_patient_record`` of vt-demo-1 (6 interactions, ~40 resources) and ``to_evidence``;
- ``write_draft_report``: a new draft (one search + one 3-entry transaction) and a redelivery (finds it);
- one paged search of 200 Observations at ``_count=20`` (10 pages).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from integrations.fhir.client import FhirClient
from integrations.fhir.patient_record import read_patient_record
from integrations.fhir.server import LocalFhirServer
from integrations.fhir.synthetic import generate_patients, load_synthetic_patients
from integrations.fhir.writeback import write_draft_report
from model.report import Statement

MODEL = {"family": "qwen2_5_vl", "architecture": "bench", "weights_sha256": "cd" * 32, "untrained": True}


def _timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def _row(name: str, samples_ms: list[float], note: str = "") -> str:
    p95 = sorted(samples_ms)[max(0, round(0.95 * len(samples_ms)) - 1)]
    mean, median = statistics.mean(samples_ms), statistics.median(samples_ms)
    return f"| {name} | {len(samples_ms)} | {mean:.1f} | {median:.1f} | {p95:.1f} | {note} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reads", type=int, default=50)
    parser.add_argument("--writes", type=int, default=20)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        server = LocalFhirServer(Path(tmp) / "fhir")
        server.start()
        rows.append(_row("server start to /metadata", [(time.perf_counter() - t) * 1000]))
        try:
            with FhirClient(server.base_url) as client:
                patients = generate_patients()
                count = sum(len(p.resources) for p in patients)
                rows.append(
                    _row(
                        "load synthetic (first)",
                        _timed(lambda: load_synthetic_patients(client, patients), 1),
                        f"{count} resources, 3 transactions",
                    )
                )
                rows.append(
                    _row(
                        "load synthetic (again)",
                        _timed(lambda: load_synthetic_patients(client, patients), 3),
                        "compare only, 0 writes",
                    )
                )
                record = read_patient_record(client, "vt-demo-1")
                n_res = sum(1 for _ in record.resources())
                rows.append(
                    _row(
                        "read_patient_record",
                        _timed(lambda: read_patient_record(client, "vt-demo-1"), args.reads),
                        f"{len(record.reads)} interactions, {n_res} resources",
                    )
                )
                rows.append(_row("to_evidence", _timed(record.to_evidence, args.reads), f"{n_res} items"))
                egfr = next(e for e in record.to_evidence() if e.display.startswith("eGFR"))
                statements = [Statement(text="Renal function reduced.", citations=[egfr.id])]
                ids: list[str] = []

                def write() -> None:
                    ids.append(f"bench-{uuid.uuid4().hex}")
                    write_draft_report(
                        client,
                        patient_id="vt-demo-1",
                        study_uid="1.2.3.4",
                        analysis_id=ids[-1],
                        conclusion="c",
                        statements=statements,
                        presented_text="# t",
                        model_device=MODEL,
                    )

                rows.append(
                    _row(
                        "write_draft_report (new)", _timed(write, args.writes), "search + 3-entry transaction"
                    )
                )
                retries = iter(ids)
                rows.append(
                    _row(
                        "write_draft_report (redelivery)",
                        _timed(
                            lambda: write_draft_report(
                                client,
                                patient_id="vt-demo-1",
                                study_uid="1.2.3.4",
                                analysis_id=next(retries),
                                conclusion="c",
                                statements=statements,
                                presented_text="# t",
                                model_device=MODEL,
                            ),
                            args.writes,
                        ),
                        "2 searches, no write",
                    )
                )
                pid = f"bench-{uuid.uuid4().hex[:8]}"
                client.update({"resourceType": "Patient", "id": pid})
                client.transaction(
                    {
                        "resourceType": "Bundle",
                        "type": "transaction",
                        "entry": [
                            {
                                "resource": {
                                    "resourceType": "Observation",
                                    "status": "final",
                                    "code": {"text": "x"},
                                    "subject": {"reference": f"Patient/{pid}"},
                                    "effectiveDateTime": f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z",
                                },
                                "request": {"method": "POST", "url": "Observation"},
                            }
                            for i in range(200)
                        ],
                    }
                )
                rows.append(
                    _row(
                        "search 200 obs, _count=20",
                        _timed(
                            lambda: client.search(
                                "Observation", {"patient": pid, "_sort": "-date", "_count": "20"}
                            ),
                            5,
                        ),
                        "10 pages",
                    )
                )
        finally:
            server.stop()
    print("| operation | n | mean ms | p50 ms | p95 ms | notes |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
