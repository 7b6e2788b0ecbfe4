"""A study on disk to draft reports, as the GPU worker runs it: selection, images, scheduler, drafting.

Real DICOM files written by pydicom, a tiny Gemma 3 saved and loaded through `load_vlm`, and several
studies drafted concurrently from threads through one `BatchScheduler` (the worker's thread pool).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from model.batching import BatchScheduler
from model.config import ModelConfig
from model.context import PatientContext
from model.draft import DraftResult, draft_report
from model.imaging import load_model_image, select_images
from model.report import EvidenceItem
from model.runtime import LoadedVlm, load_vlm
from model.tiny import make_tiny

torch.set_num_threads(1)


def _study(root: Path, slices: int) -> list[Path]:
    """An axial CT series made from pydicom's CT_small with new UIDs and positions."""
    template = dcmread(str(get_testdata_file("CT_small.dcm")))
    study, series = generate_uid(), generate_uid()
    paths = []
    for i in range(slices):
        ds: Dataset = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = slices - i
        ds.ImagePositionPatient = [0.0, 0.0, float(i * 5)]
        arr = ds.pixel_array.astype(np.int16) + np.int16(i * 20)
        ds.PixelData = arr.tobytes()
        path = root / f"{i}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> LoadedVlm:
    path = make_tiny("gemma3", tmp_path_factory.mktemp("worker") / "gemma3", seed=11)
    return load_vlm(ModelConfig(path=path, device="cpu", max_new_tokens=20, max_images=3))


def _context(n: int) -> PatientContext:
    return PatientContext(
        patient_id=f"p{n}",
        evidence=[
            EvidenceItem(
                id=f"obs-{n}",
                resource_type="Observation",
                resource_id=f"o{n}",
                version_id="1",
                sha256=f"{n:064x}",
                display=f"eGFR {60 + n} mL/min/1.73m2",
            )
        ],
    )


def test_concurrent_studies_share_batches_and_each_gets_its_own_trace(vlm: LoadedVlm, tmp_path: Path) -> None:
    studies = []
    for n in range(4):
        root = tmp_path / f"study{n}"
        root.mkdir()
        chosen = select_images(_study(root, slices=6 + n), max_images=vlm.max_images)
        studies.append(([load_model_image(p, preset="mediastinum") for p in chosen], _context(n)))

    alone = [draft_report(vlm, images, ctx) for images, ctx in studies]
    scheduler = BatchScheduler(vlm, max_batch=8, max_wait_s=0.5)
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            results: list[DraftResult] = list(
                pool.map(lambda s: draft_report(scheduler, s[0], s[1]), studies)
            )
        health = scheduler.health()
    finally:
        scheduler.close()

    assert health["largest_batch"] > 1 and health["requests"] == 4 and health["device"] == "cpu"
    for (images, ctx), batched, single in zip(studies, results, alone, strict=True):
        assert len(images) == 3
        assert batched.prompt_sha256 == single.prompt_sha256
        gen_b = next(s for s in batched.steps if s.kind == "generation").detail
        gen_s = next(s for s in single.steps if s.kind == "generation").detail
        assert gen_b["text"] == gen_s["text"]  # batching changed nothing for this study
        prompt_step = next(s for s in batched.steps if s.kind == "prompt").detail
        assert prompt_step["evidence_ids"] == [ctx.evidence[0].id]
        assert {i["sop_uid"] for i in prompt_step["images"]} == {im.ref.sop_uid for im in images}
        assert batched.report.untrained_model is True
        json.dumps([s.model_dump(mode="json") for s in batched.steps])  # the trace is serialisable
