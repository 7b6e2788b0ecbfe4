"""The demo's PACS side: a small CT study made from pydicom's bundled CT slice, sent over real DICOM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE


def build_demo_ct_study(out_dir: Path, *, patient_id: str, slices: int = 3, seed: int = 7) -> list[Path]:
    """Write `slices` CT instances of one new study for `patient_id` (deterministic pixels, fresh UIDs)."""
    source_path = get_testdata_file("CT_small.dcm")
    assert isinstance(source_path, str), "pydicom's bundled test data is missing"
    source = dcmread(source_path)
    study_uid, series_uid = generate_uid(), generate_uid()
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(1, slices + 1):
        ds = source.copy()
        ds.PatientID, ds.PatientName = patient_id, "Demo^Synthetic"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        ds.AccessionNumber = f"DEMO{seed:04d}"
        pixels = source.pixel_array.astype(np.int16)
        ds.PixelData = (pixels + rng.integers(-5, 6, pixels.shape, dtype=np.int16)).tobytes()
        path = out_dir / f"ct-{number:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def store_instances(
    paths: list[Path], *, host: str, port: int, called_ae: str, calling_ae: str = "DEMO_PACS"
) -> list[int]:
    """C-STORE every file over one association, as a PACS would; returns each DIMSE status in order."""
    ae = AE(ae_title=calling_ae)
    datasets = [dcmread(path) for path in paths]
    for dataset in datasets:
        ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise RuntimeError(f"association to {called_ae}@{host}:{port} was not established")
    try:
        return [int(assoc.send_c_store(dataset).Status) for dataset in datasets]
    finally:
        assoc.release()
