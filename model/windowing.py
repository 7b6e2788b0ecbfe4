"""Grey-level mapping from stored DICOM values to the 8-bit display a VLM was trained on.

Order follows PS3.3 C.11 (the grayscale pipeline): modality LUT / rescale to physical units (HU for CT),
then a VOI transform (a named CT preset, else the file's VOI LUT or window, else the data's own range),
then MONOCHROME1 inversion so that "bright" always means "dense" to the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut


@dataclass(frozen=True)
class Window:
    """A window centre/width pair in output units of the modality LUT (HU for CT)."""

    center: float
    width: float


CT_PRESETS: dict[str, Window] = {
    "lung": Window(center=-600.0, width=1500.0),
    "mediastinum": Window(center=50.0, width=350.0),
    "bone": Window(center=400.0, width=1800.0),
    "brain": Window(center=40.0, width=80.0),
}


def window_to_uint8(values: NDArray[np.floating], window: Window) -> NDArray[np.uint8]:
    """Linear window (PS3.3 C.11.2.1.2.1 without the half-unit offsets): below → 0, above → 255."""
    if window.width <= 0:
        raise ValueError(f"window width must be positive, got {window.width}")
    low = window.center - window.width / 2.0
    scaled = (values.astype(np.float64) - low) / window.width
    return np.asarray(np.clip(np.rint(scaled * 255.0), 0, 255), dtype=np.uint8)


def range_to_uint8(values: NDArray[np.floating]) -> NDArray[np.uint8]:
    """Stretch the 0.5th..99.5th percentile to 0..255; a constant image becomes mid-grey."""
    lo, hi = np.percentile(values, [0.5, 99.5]) if values.size else (0.0, 0.0)
    if hi <= lo:
        return np.full(values.shape, 128, dtype=np.uint8)
    return window_to_uint8(values, Window(center=(lo + hi) / 2.0, width=hi - lo))


def _has_voi(ds: Dataset) -> bool:
    return "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)


def grayscale_to_uint8(
    stored: NDArray[np.generic], ds: Dataset, *, preset: str | None = None, frame: int = 0
) -> NDArray[np.uint8]:
    """Map one frame of stored grayscale values to 8-bit display values.

    `preset` (lung, mediastinum, bone, brain) applies only to CT; asking for one on another modality is
    a `ValueError`, because a HU window on MR or CR intensities would produce a meaningless image.
    """
    if preset is not None:
        if preset not in CT_PRESETS:
            raise ValueError(f"unknown window preset {preset!r}; choose one of {sorted(CT_PRESETS)}")
        if ds.get("Modality") != "CT":
            raise ValueError(f"window preset {preset!r} is for CT, not modality {ds.get('Modality')!r}")
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if preset is not None:
        display = window_to_uint8(values, CT_PRESETS[preset])
    elif "VOILUTSequence" in ds:
        display = _voi_lut_to_uint8(values, ds, frame)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        display = _file_window_to_uint8(values, ds, frame)
    else:
        display = range_to_uint8(values)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        display = np.asarray(255 - display, dtype=np.uint8)
    return display


def _pick(value: object, frame: int) -> float:
    """One number from a possibly multi-valued DS: the frame's own when there is one per frame."""
    if isinstance(value, (list, tuple)) or (hasattr(value, "__len__") and not isinstance(value, str)):
        items = list(value)  # type: ignore[call-overload]
        return float(items[frame] if 0 <= frame < len(items) and len(items) > 1 else items[0])
    return float(value)  # type: ignore[arg-type]


def _file_window_to_uint8(values: NDArray[np.floating], ds: Dataset, frame: int) -> NDArray[np.uint8]:
    """The file's own window (PS3.3 C.11.2.1.2); SIGMOID per C.11.2.1.3.1, LINEAR otherwise."""
    window = Window(center=_pick(ds.WindowCenter, frame), width=_pick(ds.WindowWidth, frame))
    if window.width <= 0:
        return range_to_uint8(values)
    if str(ds.get("VOILUTFunction", "LINEAR")).upper() == "SIGMOID":
        sig = 1.0 / (1.0 + np.exp(-4.0 * (values - window.center) / window.width))
        return np.asarray(np.clip(np.rint(sig * 255.0), 0, 255), dtype=np.uint8)
    return window_to_uint8(values, window)


def _voi_lut_to_uint8(values: NDArray[np.floating], ds: Dataset, frame: int) -> NDArray[np.uint8]:
    """Apply the file's VOI LUT, then scale its output range (LUT Descriptor's bit depth) to 0..255."""
    items = ds.VOILUTSequence
    index = frame if 0 <= frame < len(items) and len(items) > 1 else 0
    lut_bits = int(items[index].LUTDescriptor[2])
    out = np.asarray(apply_voi_lut(values, ds, index=index, prefer_lut=True), dtype=np.float64)
    top = float(2**lut_bits - 1) if lut_bits > 0 else float(out.max() or 1.0)
    return np.asarray(np.clip(np.rint(out / top * 255.0), 0, 255), dtype=np.uint8)
