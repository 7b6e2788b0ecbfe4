"""Imaging tools for the agent over one study's spooled DICOM files: list series, header facts, HU in a
region, and windowed crops the model looks at in its next step.

Why these: a VLM sees a handful of downsampled, windowed frames; these tools let it ask what the header
says (modality, body part, side, contrast, dose), measure density where it suspects something, and take a
closer look at a region in a window of its choice. Every number they return is evidence with structured
facts, so a statement quoting it can be verified; every crop carries the ``ImageRef`` of its frame.
The tools see only the files given to ``imaging_tools``: that is the study under review (the scope).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydantic import Field, model_validator
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, pixel_array

from integrations.tools.study_index import IndexedInstance, IndexedSeries, StudyIndex
from model.dicom_source import DicomFile, read_dicom
from model.report import EvidenceItem, Laterality
from model.tools import PatientScope, PatientScopedArguments, Tool, ToolFailure, ToolImage, ToolResult
from model.verification import EvidenceFacts, FactQuantity
from model.windowing import Window, grayscale_to_uint8, window_to_uint8

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
MAX_PIXELS = 8192
CROP_MIN_SIDE = 224  # crops smaller than this are enlarged so the vision tower sees more than a few patches
CROP_MAX_SIDE = 1024
# What a statement quoting these facts talks about (the verifier's "is this evidence about the statement").
HEADER_CONCEPTS = ("series acquisition", "CTDIvol radiation dose", "tube voltage kVp", "slice thickness")
REGION_CONCEPTS = ("region", "density", "attenuation", "intensity", "mean")
SIDES = {"L": Laterality.LEFT, "R": Laterality.RIGHT, "B": Laterality.BILATERAL}


class StudyArguments(PatientScopedArguments):
    """Tools that look at the whole study."""


class SeriesArguments(PatientScopedArguments):
    series_uid: str = Field(pattern=UID_PATTERN, max_length=64, description="a series UID from list_series")


class RegionArguments(SeriesArguments):
    """One frame of one instance and a rectangle on it (whole frame by default), in pixels."""

    instance: int | None = Field(
        default=None, ge=0, le=MAX_PIXELS, description="position in the series, 0 first; default middle"
    )
    frame: int | None = Field(default=None, ge=0, le=MAX_PIXELS, description="frame; default middle")
    top: int = Field(default=0, ge=0, le=MAX_PIXELS, description="first row of the region")
    left: int = Field(default=0, ge=0, le=MAX_PIXELS, description="first column of the region")
    height: int | None = Field(default=None, ge=1, le=MAX_PIXELS, description="rows; default to the edge")
    width: int | None = Field(default=None, ge=1, le=MAX_PIXELS, description="columns; default to the edge")


class CropArguments(RegionArguments):
    window: Literal["default", "lung", "mediastinum", "bone", "brain"] = Field(
        default="default", description="CT window preset, or the file's own window"
    )
    window_center: float | None = Field(default=None, ge=-5000, le=50000, description="custom window")
    window_width: float | None = Field(default=None, ge=1, le=100000, description="custom window")

    @model_validator(mode="after")
    def _both_or_neither(self) -> CropArguments:
        if (self.window_center is None) != (self.window_width is None):
            raise ValueError("window_center and window_width go together")
        return self


def _digest(content: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def _number(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        return round(float(value), 3)
    except (TypeError, ValueError):
        return None


def _nested(ds: Dataset, *path: str) -> Any:
    """A value inside the first item of nested sequences (enhanced multi-frame functional groups)."""
    node: Any = ds
    for keyword in path[:-1]:
        items = node.get(keyword) if node is not None else None
        node = items[0] if items else None
    return node.get(path[-1]) if node is not None else None


def _laterality(ds: Dataset) -> Laterality:
    code = str(ds.get("ImageLaterality") or ds.get("Laterality") or "").strip().upper()
    return SIDES.get(code, Laterality.NONE)


def _contrast(ds: Dataset) -> dict[str, Any] | None:
    agent = str(ds.get("ContrastBolusAgent") or "").strip()
    if not agent and "ContrastBolusAgentSequence" in ds:
        item = ds.ContrastBolusAgentSequence[0]
        agent = str(item.get("CodeMeaning") or item.get("CodeValue") or "").strip()
    if not agent:
        return None
    return {
        "agent": agent,
        "route": str(ds.get("ContrastBolusRoute") or "").strip() or None,
        "volume_ml": _number(ds.get("ContrastBolusVolume")),
    }


def _dose(ds: Dataset) -> dict[str, float | None]:
    ctdi = ds.get("CTDIvol")
    if ctdi is None:
        ctdi = _nested(ds, "SharedFunctionalGroupsSequence", "CTExposureSequence", "CTDIvol")
    return {
        "ctdi_vol_mgy": _number(ctdi),
        "kvp": _number(ds.get("KVP")),
        "tube_current_ma": _number(ds.get("XRayTubeCurrent")),
        "exposure_mas": _number(ds.get("Exposure")),
    }


def _quantity(value: float | None, unit: str) -> list[FactQuantity]:
    return [] if value is None else [FactQuantity(value=Decimal(str(value)), unit=unit)]


class ImagingTools:
    """The imaging tools over one study's files; ``tools()`` gives them to a registry."""

    def __init__(self, paths: Sequence[DicomFile]) -> None:
        self.index = StudyIndex(list(paths))

    def _series(self, series_uid: str) -> IndexedSeries:
        series = self.index.get(series_uid)
        if series is None:
            known = ", ".join(list(self.index.series())[:8]) or "none"
            raise ToolFailure(f"no series {series_uid} in this study (series: {known})")
        return series

    def list_series(self, scope: PatientScope, args: StudyArguments) -> ToolResult:
        listed = []
        for uid, series in self.index.series().items():
            ds = series.header
            listed.append(
                {
                    "series_uid": uid,
                    "modality": str(ds.get("Modality", "")),
                    "description": str(ds.get("SeriesDescription", ""))[:64],
                    "body_part": str(ds.get("BodyPartExamined", "")),
                    "instances": len(series.instances),
                    "frames": sum(i.frames for i in series.instances),
                    "rows": ds.get("Rows"),
                    "columns": ds.get("Columns"),
                }
            )
        return ToolResult(
            content={"count": len(listed), "series": listed, "unreadable": self.index.unreadable}
        )

    def header_facts(self, scope: PatientScope, args: SeriesArguments) -> ToolResult:
        series = self._series(args.series_uid)
        ds = series.header
        middle = series.instances[len(series.instances) // 2]
        spacing = ds.get("PixelSpacing") or _nested(
            ds, "SharedFunctionalGroupsSequence", "PixelMeasuresSequence", "PixelSpacing"
        )
        thickness = ds.get("SliceThickness") or _nested(
            ds, "SharedFunctionalGroupsSequence", "PixelMeasuresSequence", "SliceThickness"
        )
        side = _laterality(ds)
        facts_content: dict[str, Any] = {
            "series_uid": series.series_uid,
            "modality": str(ds.get("Modality", "")),
            "body_part": str(ds.get("BodyPartExamined", "")) or None,
            "laterality": side.value,
            "contrast": _contrast(ds),
            "dose": _dose(ds),
            "slice_thickness_mm": _number(thickness),
            "pixel_spacing_mm": [_number(v) for v in spacing] if spacing else None,
            "instances": len(series.instances),
        }
        evidence_id = f"dicom-series:{series.series_uid}"
        dose = facts_content["dose"]
        contrast = facts_content["contrast"]
        display = (
            f"{facts_content['modality']} series, body part {facts_content['body_part'] or 'not stated'}, "
            f"laterality {side.value}, "
            + (f"contrast {contrast['agent']}" if contrast else "no contrast recorded")
            + (f", CTDIvol {dose['ctdi_vol_mgy']} mGy" if dose["ctdi_vol_mgy"] is not None else "")
            + (f", {dose['kvp']} kV" if dose["kvp"] is not None else "")
            + (f", slice thickness {facts_content['slice_thickness_mm']} mm" if thickness else "")
        )
        item = EvidenceItem(
            id=evidence_id,
            resource_type="DicomSeries",
            resource_id=series.series_uid,
            sha256=_digest(facts_content),
            display=display[:400],
        )
        facts = EvidenceFacts(
            resource_type="DicomSeries",
            quantities=[
                *_quantity(dose["ctdi_vol_mgy"], "mGy"),
                *_quantity(dose["kvp"], "kV"),
                *_quantity(facts_content["slice_thickness_mm"], "mm"),
            ],
            names=[n for n in (facts_content["modality"], facts_content["body_part"]) if n]
            + ([contrast["agent"], "contrast"] if contrast else [])
            + list(HEADER_CONCEPTS),
            laterality=[side] if side is not Laterality.NONE else [],
        )
        return ToolResult(
            content={"id": evidence_id, "image": middle.ref().citation_id, **facts_content},
            evidence=[item],
            facts={evidence_id: facts},
            image_refs=[middle.ref()],
        )

    def _frame(self, args: RegionArguments) -> tuple[IndexedInstance, int, Dataset, NDArray[Any]]:
        series = self._series(args.series_uid)
        images = [i for i in series.instances if i.has_pixels]
        if not images:
            raise ToolFailure(f"series {series.series_uid} has no images")
        position = len(images) // 2 if args.instance is None else args.instance
        if position >= len(images):
            raise ToolFailure(f"instance {position} out of range 0..{len(images) - 1}")
        instance = images[position]
        frame = instance.frames // 2 if args.frame is None else args.frame
        if frame >= instance.frames:
            raise ToolFailure(f"frame {frame} out of range 0..{instance.frames - 1}")
        try:
            ds = read_dicom(instance.path)
            stored = pixel_array(ds, index=frame if instance.frames > 1 else None)
        except (InvalidDicomError, OSError, RuntimeError, NotImplementedError, ValueError) as exc:
            raise ToolFailure(f"pixel data of instance {position} could not be decoded") from exc
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise ToolFailure("this is a colour image; the tool needs grayscale values")
        if stored.ndim == 3:
            stored = stored[0]
        return instance, frame, ds, np.asarray(stored)

    @staticmethod
    def _region(args: RegionArguments, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        rows, columns = int(shape[0]), int(shape[1])
        if args.top >= rows or args.left >= columns:
            raise ToolFailure(f"region starts outside the {rows}x{columns} image")
        height = min(args.height or rows, rows - args.top)
        width = min(args.width or columns, columns - args.left)
        return args.top, args.left, height, width

    def region_statistics(self, scope: PatientScope, args: RegionArguments) -> ToolResult:
        instance, frame, ds, stored = self._frame(args)
        top, left, height, width = self._region(args, stored.shape)
        values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)[
            top : top + height, left : left + width
        ]
        modality = str(ds.get("Modality", ""))
        unit = "HU" if modality == "CT" else None
        stats = {
            "mean": round(float(values.mean()), 1),
            "sd": round(float(values.std()), 1),
            "median": round(float(np.median(values)), 1),
            "min": round(float(values.min()), 1),
            "max": round(float(values.max()), 1),
        }
        spacing = ds.get("PixelSpacing")
        area = (
            round(height * width * float(spacing[0]) * float(spacing[1]), 1)
            if spacing and len(spacing) == 2
            else None
        )
        ref = instance.ref(frame)
        region = {"top": top, "left": left, "height": height, "width": width}
        content = {
            "image": ref.citation_id,
            "region": region,
            "pixels": int(values.size),
            "area_mm2": area,
            "unit": unit,
            **stats,
        }
        evidence_id = f"roi:{instance.sop_uid}:{frame}:{top},{left},{height},{width}"
        unit_text = f" {unit}" if unit else ""
        item = EvidenceItem(
            id=evidence_id,
            resource_type="ImageRegion",
            resource_id=instance.sop_uid,
            sha256=_digest(content),
            display=(
                f"{modality} region {height}x{width} px at ({top},{left}), frame {frame}: "
                f"mean {stats['mean']}{unit_text}, sd {stats['sd']}{unit_text}, "
                f"min {stats['min']}{unit_text}, max {stats['max']}{unit_text}"
            ),
        )
        facts = EvidenceFacts(
            resource_type="ImageRegion",
            quantities=[FactQuantity(value=Decimal(str(v)), unit=unit) for v in stats.values()]
            + ([FactQuantity(value=Decimal(str(area)), unit="mm2")] if area is not None else []),
            numbers=[Decimal(top), Decimal(left), Decimal(height), Decimal(width)],
            names=[modality, *REGION_CONCEPTS],
        )
        return ToolResult(
            content={"id": evidence_id, **content},
            evidence=[item],
            facts={evidence_id: facts},
            image_refs=[ref],
        )

    def windowed_crop(self, scope: PatientScope, args: CropArguments) -> ToolResult:
        instance, frame, ds, stored = self._frame(args)
        top, left, height, width = self._region(args, stored.shape)
        if args.window_center is not None and args.window_width is not None:
            window = Window(center=args.window_center, width=args.window_width)
            display = window_to_uint8(np.asarray(apply_modality_lut(stored, ds), dtype=np.float64), window)
            if ds.get("PhotometricInterpretation") == "MONOCHROME1":
                display = np.asarray(255 - display, dtype=np.uint8)
            window_text = f"window {window.center:g}/{window.width:g}"
        else:
            preset = None if args.window == "default" else args.window
            try:
                display = grayscale_to_uint8(stored, ds, preset=preset, frame=frame)
            except ValueError as exc:
                raise ToolFailure(str(exc)) from exc
            window_text = f"{args.window} window"
        crop = Image.fromarray(
            np.ascontiguousarray(display[top : top + height, left : left + width]), mode="L"
        )
        crop = _enlarge(crop)
        ref = instance.ref(frame)
        description = f"crop {height}x{width} px at ({top},{left}) of frame {frame}, {window_text}"
        return ToolResult(
            content={
                "image": ref.citation_id,
                "region": {"top": top, "left": left, "height": height, "width": width},
                "window": window_text,
                "shown_size": list(crop.size),
                "note": "the crop is shown to you as an image in your next step",
            },
            image_refs=[ref],
            images=[ToolImage(image=crop, ref=ref, description=description)],
        )

    def tools(self) -> list[Tool[Any]]:
        return [
            Tool(
                "list_series",
                "The study's series: modality, body part, size.",
                StudyArguments,
                self.list_series,
            ),
            Tool(
                "dicom_header_facts",
                "Header facts of a series: modality, body part, laterality, contrast, dose (CTDIvol, kV).",
                SeriesArguments,
                self.header_facts,
            ),
            Tool(
                "region_statistics",
                "Pixel statistics (HU on CT: mean, sd, median, min, max) in a rectangle of one frame.",
                RegionArguments,
                self.region_statistics,
            ),
            Tool(
                "windowed_crop",
                "A rectangle of one frame in a window of your choice, shown to you in the next step.",
                CropArguments,
                self.windowed_crop,
            ),
        ]


def _enlarge(image: Image.Image) -> Image.Image:
    """Scale a small crop up, aspect kept: short side to CROP_MIN_SIDE, long side at most CROP_MAX_SIDE."""
    shorter, longer = min(image.size), max(image.size)
    scale = min(CROP_MIN_SIDE / shorter, CROP_MAX_SIDE / longer) if shorter < CROP_MIN_SIDE else 1.0
    if scale <= 1.0:
        return image
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def imaging_tools(paths: Sequence[DicomFile]) -> list[Tool[Any]]:
    """The imaging tools over one study's files (the spool paths of the analysis)."""
    return ImagingTools(paths).tools()
