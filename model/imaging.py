"""DICOM instance → the image a VLM sees, plus the reference that lets statements cite it.

Decoding covers every transfer syntax pydicom's pixel backends handle (native, RLE, JPEG baseline /
lossless / LS, JPEG 2000 with the pylibjpeg plugins); colour images come out as RGB whatever their
photometric interpretation (RGB, YBR_*, PALETTE COLOR); grayscale goes through `model.windowing`.
Images are resampled to square pixels and bounded in size here; the processor then resizes to what its
vision tower expects. Pixel data stays in this process: only `ImageRef`s go into traces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, pixel_array

from model.dicom_source import DicomFile, read_dicom, source_name
from model.report import ImageRef
from model.series_selection import select_frames, select_images
from model.windowing import grayscale_to_uint8

__all__ = ["DicomImageError", "ModelImage", "load_model_image", "select_frames", "select_images"]

DEFAULT_MAX_SIDE = 1024


class DicomImageError(ValueError):
    """A file cannot be turned into a model image (not DICOM, no pixels, bad frame, missing UIDs)."""


@dataclass(frozen=True)
class ModelImage:
    """One model-ready image: `image` is 8-bit L or RGB, `ref` says which frame of which instance it is."""

    image: Image.Image
    ref: ImageRef
    description: str


def _read(source: DicomFile) -> Dataset:
    name = source_name(source)
    try:
        ds = read_dicom(source)
    except (InvalidDicomError, OSError) as exc:
        raise DicomImageError(f"{name}: not a readable DICOM file ({type(exc).__name__})") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomImageError(f"{name}: has no pixel data (SOP class {ds.get('SOPClassUID', '?')})")
    return ds


def _ref(ds: Dataset, name: str, frame: int) -> ImageRef:
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if not ds.get(k)]
    if missing:
        raise DicomImageError(f"{name}: missing {', '.join(missing)}")
    return ImageRef(
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        sop_uid=str(ds.SOPInstanceUID),
        frame=frame,
    )


def _colour_to_uint8(rgb: NDArray[np.generic], ds: Dataset) -> NDArray[np.uint8]:
    if rgb.dtype == np.uint8:
        return rgb.astype(np.uint8)
    bits = int(ds.get("BitsStored", rgb.dtype.itemsize * 8))
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        bits = 16 if rgb.max() > 255 else 8  # palette LUT entries are 8 or 16 bit whatever BitsStored says
    scaled = rgb.astype(np.float64) / float(2**bits - 1) * 255.0
    return np.asarray(np.clip(np.rint(scaled), 0, 255), dtype=np.uint8)


def _to_display(arr: NDArray[np.generic], ds: Dataset, preset: str | None, frame: int) -> NDArray[np.uint8]:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        return _colour_to_uint8(np.asarray(apply_color_lut(arr, ds)), ds)
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        if preset is not None:
            raise ValueError(f"window preset {preset!r} applies to grayscale images, not {photometric}")
        return _colour_to_uint8(arr, ds)
    return grayscale_to_uint8(arr, ds, preset=preset, frame=frame)


def _square_and_bound(image: Image.Image, ds: Dataset, max_side: int) -> Image.Image:
    """Resample to square pixels (PixelSpacing is row, column spacing) and to at most `max_side` pixels."""
    width, height = image.size
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if spacing is not None and len(spacing) == 2 and float(spacing[0]) > 0 and float(spacing[1]) > 0:
        row_mm, col_mm = float(spacing[0]), float(spacing[1])
        if abs(row_mm - col_mm) / max(row_mm, col_mm) > 0.01:
            width = round(width * col_mm / row_mm)
    scale = min(1.0, max_side / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def _describe(ds: Dataset, frame: int, frames: int, preset: str | None) -> str:
    """Non-identifying description for the prompt: modality, body part, window, frame position."""
    parts = [str(ds.get("Modality", "image"))]
    if ds.get("BodyPartExamined"):
        parts.append(str(ds.BodyPartExamined).lower())
    if preset:
        parts.append(f"{preset} window")
    if frames > 1:
        parts.append(f"frame {frame + 1} of {frames}")
    return ", ".join(parts)


def frame_count(ds: Dataset) -> int:
    """Number of frames in an instance (1 when NumberOfFrames is absent or empty)."""
    value = ds.get("NumberOfFrames")
    if value in (None, ""):
        return 1
    try:
        return max(1, int(value))
    except ValueError as exc:
        raise DicomImageError(f"NumberOfFrames {value!r} is not a number") from exc


def load_model_image(
    dicom_path: DicomFile,
    *,
    preset: str | None = None,
    frame: int | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
) -> ModelImage:
    """Decode one frame of `dicom_path` (the middle one when `frame` is None) into a model image.

    `dicom_path` is a path or a stored object (e.g. an encrypted spool file, decrypted as it is read).
    `preset` is a CT window (lung, mediastinum, bone, brain); without one the file's VOI LUT or window
    is used, else its 0.5–99.5 percentile range. MONOCHROME1 is inverted; colour becomes RGB.
    """
    name = source_name(dicom_path)
    ds = _read(dicom_path)
    try:
        return _decode(name, ds, preset, frame, max_side)
    except DicomImageError:
        raise
    except (AttributeError, KeyError, TypeError, IndexError) as exc:  # malformed headers
        raise DicomImageError(f"{name}: malformed image attributes: {exc}") from exc


def _decode(name: str, ds: Dataset, preset: str | None, frame: int | None, max_side: int) -> ModelImage:
    frames = frame_count(ds)
    index = frames // 2 if frame is None else frame
    if not 0 <= index < frames:
        raise DicomImageError(f"{name}: frame {index} out of range 0..{frames - 1}")
    try:
        arr = pixel_array(ds, index=index if frames > 1 else None)
    except (RuntimeError, NotImplementedError, ValueError, AttributeError) as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID", "?") if hasattr(ds, "file_meta") else "?"
        raise DicomImageError(f"{name}: pixel data could not be decoded ({syntax}): {exc}") from exc
    if arr.ndim == 3 and arr.shape[-1] != 3 and int(ds.get("SamplesPerPixel", 1)) == 1:
        arr = arr[0]  # a single-frame read that still carries a frame axis
    display = _to_display(np.asarray(arr), ds, preset, index)
    image = Image.fromarray(display, mode="RGB" if display.ndim == 3 else "L")
    return ModelImage(
        image=_square_and_bound(image, ds, max_side),
        ref=_ref(ds, name, index),
        description=_describe(ds, index, frames, preset),
    )
