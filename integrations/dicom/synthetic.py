"""Synthetic, PHI-free DICOM instances for benchmarks, demos and tests.

Real scanner output cannot live in the repository; these objects carry the attributes the gateway and
the model preprocessing read (UIDs, modality, body part, pixel module) and obviously fake demographics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
SR_COMPREHENSIVE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.88.33")
_SOP_CLASS_BY_MODALITY = {
    "CT": CT_IMAGE_STORAGE,
    "CR": CR_IMAGE_STORAGE,
    "DX": UID("1.2.840.10008.5.1.4.1.1.1.1"),
}


def make_image(
    *,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    modality: str = "CT",
    rows: int = 64,
    columns: int = 64,
    body_part: str = "CHEST",
    patient_id: str = "SYN-0001",
    instance_number: int = 1,
    seed: int = 0,
) -> Dataset:
    """A 16-bit monochrome image with deterministic noise (same arguments, same bytes)."""
    sop_class = _SOP_CLASS_BY_MODALITY.get(modality, CT_IMAGE_STORAGE)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid or generate_uid())
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = "SYNTHETIC^PATIENT"
    ds.PatientID = patient_id
    ds.AccessionNumber = "SYNACC1"
    ds.StudyDate = "20260101"
    ds.Modality = modality
    ds.BodyPartExamined = body_part
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 512
    ds.WindowWidth = 1024
    pixels = np.random.default_rng(seed).integers(0, 4096, size=(rows, columns), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    return ds


def write_part10(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
