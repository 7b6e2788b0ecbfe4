"""Which instances of a study the model looks at, by rules a radiologist can check.

Rules, applied to headers only (pixel data is not read):
1. Instances without pixels and non-image objects (SEG, SR, RT*, KO, PR, REG) are skipped, and so are
   localizers / scouts (ImageType contains LOCALIZER).
2. Series are ranked: ORIGINAL before DERIVED, axial orientation (ImageOrientationPatient normal along
   the patient's z axis) before coronal / sagittal / unknown, then more images (frames) first, then
   lower SeriesNumber.
3. From the best series, `max_images` instances are taken at evenly spaced positions along the stack
   (sorted by ImagePositionPatient along the slice normal, else InstanceNumber), avoiding the first and
   last slice, which rarely show the region of interest.
4. If the best series has fewer instances than `max_images` (radiographs: one view per series), the
   remaining slots go to the next series in rank order (e.g. the lateral after the PA).
5. Multi-frame instances (enhanced CT/MR, US cine) count each frame as one position of the stack, in
   stored order: `select_frames` returns (path, frame) pairs, `select_images` the distinct paths.
Paths whose headers cannot be read are skipped; the result may be shorter than `max_images`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic

import numpy as np
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from model.dicom_source import SourceT, read_dicom, source_order

NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "KO", "PR", "REG"})
AXIAL_TOLERANCE = 0.8  # |normal . z| above this counts as axial (within about 37 degrees)


@dataclass(frozen=True)
class _Instance(Generic[SourceT]):
    path: SourceT
    position: float
    instance_number: int
    frames: int = 1


@dataclass
class _Series(Generic[SourceT]):
    uid: str
    number: int
    original: bool
    axial: bool
    instances: list[_Instance[SourceT]] = field(default_factory=list)

    def rank(self) -> tuple[int, int, int, int]:
        frames = sum(i.frames for i in self.instances)
        return (0 if self.original else 1, 0 if self.axial else 1, -frames, self.number)


def _normal(ds: Dataset) -> np.ndarray | None:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    row, col = np.array(iop[:3], dtype=float), np.array(iop[3:], dtype=float)
    n = np.cross(row, col)
    norm = float(np.linalg.norm(n))
    return n / norm if norm > 0 else None


def _is_image(ds: Dataset) -> bool:
    if ds.get("Modality") in NON_IMAGE_MODALITIES or "Rows" not in ds or "Columns" not in ds:
        return False
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    return "LOCALIZER" not in image_type


def _series_of(ds: Dataset, series: dict[str, _Series[SourceT]]) -> _Series[SourceT]:
    uid = str(ds.get("SeriesInstanceUID", ""))
    if uid not in series:
        image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
        normal = _normal(ds)
        series[uid] = _Series(
            uid=uid,
            number=int(ds.get("SeriesNumber") or 0),
            original=not image_type or image_type[0] == "ORIGINAL",
            axial=normal is not None and abs(float(normal[2])) > AXIAL_TOLERANCE,
        )
    return series[uid]


def _position(ds: Dataset) -> float:
    ipp, normal = ds.get("ImagePositionPatient"), _normal(ds)
    if ipp is not None and len(ipp) == 3 and normal is not None:
        return float(np.dot(np.array(ipp, dtype=float), normal))
    return float(ds.get("InstanceNumber") or 0)


def evenly_spaced(count: int, take: int) -> list[int]:
    """`take` indices of `range(count)` at quantiles (i+1)/(take+1): ends avoided, all when take >= count."""
    if take >= count:
        return list(range(count))
    picks = [round((i + 1) * (count - 1) / (take + 1)) for i in range(take)]
    return sorted(dict.fromkeys(picks))


def _frames(ds: Dataset) -> int:
    value = ds.get("NumberOfFrames")
    try:
        return max(1, int(value)) if value not in (None, "") else 1
    except ValueError:
        return 1


def select_images(dicom_paths: Sequence[SourceT], max_images: int) -> list[SourceT]:
    """Pick at most `max_images` instances of a study following the module's rules (best series first)."""
    return list(dict.fromkeys(path for path, _ in select_frames(dicom_paths, max_images)))


def select_frames(dicom_paths: Sequence[SourceT], max_images: int) -> list[tuple[SourceT, int]]:
    """Pick at most `max_images` (path, frame) pairs following the module's rules (best series first).

    Paths may be plain paths or stored objects (`model.dicom_source`); the ones chosen are returned as given.
    """
    if max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}")
    series: dict[str, _Series[SourceT]] = {}
    for path in dicom_paths:
        try:
            ds = read_dicom(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue
        if not _is_image(ds):
            continue
        _series_of(ds, series).instances.append(
            _Instance(path, _position(ds), int(ds.get("InstanceNumber") or 0), _frames(ds))
        )
    chosen: list[tuple[SourceT, int]] = []
    for s in sorted(series.values(), key=_Series.rank):
        ordered = sorted(s.instances, key=lambda i: (i.position, i.instance_number, source_order(i.path)))
        stack = [(inst.path, frame) for inst in ordered for frame in range(inst.frames)]
        left = max_images - len(chosen)
        chosen += [stack[i] for i in evenly_spaced(len(stack), left)]
        if len(chosen) >= max_images:
            break
    return chosen
