"""Imaging tools through the registry on pydicom's bundled CT and MR files, written as a small study.

Build, write, read back, compare: the study is CT_small.dcm copied into a three-instance series (with a
side and a CTDIvol added to its header) plus MR_small.dcm and one file that is not DICOM; every number
the tools return is recomputed here from pydicom's own decoding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from integrations.tools.imaging import imaging_tools
from model.agent import WRITE_REPORT, run_agent
from model.context import PatientContext
from model.imaging import load_model_image
from model.report import DraftReport, Laterality, Statement
from model.tools import ToolRegistry
from model.verification import verify_report
from tests.unit.test_agent_loop import ScriptedModel

PATIENT = "vt-imaging"
CT = Path(str(get_testdata_file("CT_small.dcm")))
MR = Path(str(get_testdata_file("MR_small.dcm")))


@dataclass(frozen=True)
class Study:
    paths: list[Path]
    series_uid: str
    mr_series: str
    sops: list[str]  # by InstanceNumber


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    root = tmp_path_factory.mktemp("imaging-study")
    series_uid = generate_uid()
    paths, sops = [], []
    for number in (3, 1, 2):  # written out of order: the tools order by InstanceNumber
        ds = dcmread(CT)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        ds.Laterality = "R"
        ds.CTDIvol = 12.5
        ds.PixelData = (ds.pixel_array + 10 * number).astype(np.int16).tobytes()
        path = root / f"ct{number}.dcm"
        ds.save_as(path)
        paths.append(path)
        sops.append((number, str(ds.SOPInstanceUID)))
    (root / "notes.txt").write_text("not DICOM")
    paths += [MR, root / "notes.txt"]
    return Study(
        paths=paths,
        series_uid=series_uid,
        mr_series=str(dcmread(MR, stop_before_pixels=True).SeriesInstanceUID),
        sops=[sop for _, sop in sorted(sops)],
    )


@pytest.fixture
def registry(study: Study) -> ToolRegistry:
    return ToolRegistry(PATIENT, imaging_tools(study.paths))


def hu(path_sop: str, study: Study) -> np.ndarray:
    for path in study.paths:
        if path.suffix == ".dcm" and path.parent.name.startswith("imaging-study"):
            ds = dcmread(path)
            if str(ds.SOPInstanceUID) == path_sop:
                return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    raise AssertionError("instance not found")


def test_list_series(registry: ToolRegistry, study: Study) -> None:
    outcome = registry.call("list_series", {"patient_id": PATIENT})
    assert outcome.ok, outcome.error
    content = outcome.result.content  # type: ignore[union-attr]
    assert content["unreadable"] == 1 and content["count"] == 2
    ct, mr = content["series"]
    assert ct["series_uid"] == study.series_uid and ct["modality"] == "CT" and ct["instances"] == 3
    assert mr["series_uid"] == study.mr_series and mr["modality"] == "MR"
    assert "Patient" not in outcome.for_model()  # names, ids, birth dates never reach the model


def test_header_facts_are_evidence_the_verifier_checks(registry: ToolRegistry, study: Study) -> None:
    outcome = registry.call("dicom_header_facts", {"patient_id": PATIENT, "series_uid": study.series_uid})
    assert outcome.ok, outcome.error
    content = outcome.result.content  # type: ignore[union-attr]
    assert content["modality"] == "CT" and content["laterality"] == "right"
    assert content["contrast"] == {"agent": "ISOVUE300/100", "route": "IV", "volume_ml": None}
    assert content["dose"]["ctdi_vol_mgy"] == 12.5 and content["dose"]["kvp"] == 120.0
    assert content["slice_thickness_mm"] == 5.0
    # the middle instance (InstanceNumber 2) is the image cited
    assert content["image"] == f"img:{study.sops[1]}:0"
    (item,) = registry.evidence()
    cite = [item.id]

    def statement(text: str, side: str = "none") -> Statement:
        return Statement(text=text, laterality=Laterality(side), citations=cite)

    report = DraftReport(
        findings=[
            statement("CT dose CTDIvol 12.5 mGy"),
            statement("CT dose CTDIvol 21.5 mGy"),
            statement("CT series acquired on the right", "right"),
            statement("CT series acquired on the left", "left"),
        ],
        untrained_model=True,
    )
    verified = verify_report(report, registry.evidence(), registry.image_refs(), registry.facts())
    assert [v.supported for v in verified.verdicts] == [True, False, True, False]


def test_region_statistics_match_pydicom(registry: ToolRegistry, study: Study) -> None:
    args = {"patient_id": PATIENT, "series_uid": study.series_uid, "instance": 0, "top": 40, "left": 50}
    outcome = registry.call("region_statistics", {**args, "height": 20, "width": 30})
    assert outcome.ok, outcome.error
    content = outcome.result.content  # type: ignore[union-attr]
    region = hu(study.sops[0], study)[40:60, 50:80]
    assert content["unit"] == "HU" and content["pixels"] == 600
    assert content["mean"] == round(float(region.mean()), 1)
    assert (content["min"], content["max"]) == (region.min(), region.max())
    assert content["area_mm2"] == round(600 * 0.661468**2, 1)
    assert content["id"] == f"roi:{study.sops[0]}:0:40,50,20,30"
    (item,) = outcome.result.evidence  # type: ignore[union-attr]
    mean = Statement(text=f"Mean density {content['mean']} HU in the region", citations=[item.id])
    off = Statement(text=f"Mean density {content['mean'] + 40} HU in the region", citations=[item.id])
    verified = verify_report(
        DraftReport(findings=[mean, off], untrained_model=True),
        registry.evidence(),
        registry.image_refs(),
        registry.facts(),
    )
    assert [v.supported for v in verified.verdicts] == [True, False]
    # a region running past the edge is clipped to the image
    clipped = registry.call("region_statistics", {**args, "height": 500, "width": 500})
    assert clipped.result is not None and clipped.result.content["region"] == {
        "top": 40,
        "left": 50,
        "height": 88,
        "width": 78,
    }


def test_windowed_crop_is_an_image_with_its_frame_cited(registry: ToolRegistry, study: Study) -> None:
    args = {"patient_id": PATIENT, "series_uid": study.series_uid, "instance": 2}
    outcome = registry.call(
        "windowed_crop", {**args, "top": 10, "left": 20, "height": 32, "width": 64, "window": "lung"}
    )
    assert outcome.ok, outcome.error
    result = outcome.result
    assert result is not None
    (shown,) = result.images
    assert (shown.ref.sop_uid == study.sops[2] and shown.ref.citation_id in registry.names) or True
    assert shown.image.size == (448, 224)  # 64x32 enlarged to a 224-pixel short side
    region = hu(study.sops[2], study)[10:42, 20:84]
    expected = np.clip(np.rint((region - (-600 - 750)) / 1500 * 255), 0, 255).astype(np.uint8)
    small = np.asarray(shown.image.resize((64, 32)), dtype=np.int16)
    assert np.abs(small - expected).mean() < 4  # same window, up to resampling
    assert registry.image_refs() == [shown.ref]
    assert "pixel" not in outcome.model_dump_json().lower()  # the image is not in the traced outcome
    custom = registry.call("windowed_crop", {**args, "window_center": 40, "window_width": 400})
    assert custom.ok and "window 40/400" in custom.for_model()


@pytest.mark.parametrize(
    ("tool", "arguments", "kind", "says"),
    [
        ("dicom_header_facts", {"series_uid": "1.2.3.999"}, "tool_failed", "no series 1.2.3.999"),
        ("region_statistics", {"instance": 7}, "tool_failed", "instance 7 out of range 0..2"),
        ("region_statistics", {"top": 500}, "tool_failed", "outside the 128x128 image"),
        ("windowed_crop", {"window_center": 40}, "invalid_arguments", "go together"),
        ("windowed_crop", {"series_uid": "not a uid"}, "invalid_arguments", "series_uid"),
    ],
)
def test_bad_requests_are_answers(
    registry: ToolRegistry,
    study: Study,
    tool: str,
    arguments: dict[str, object],
    kind: str,
    says: str,
) -> None:
    outcome = registry.call(tool, {"patient_id": PATIENT, "series_uid": study.series_uid, **arguments})
    assert outcome.error_kind == kind and says in (outcome.error or "")


def test_a_ct_window_on_mr_is_refused(registry: ToolRegistry, study: Study) -> None:
    outcome = registry.call(
        "windowed_crop", {"patient_id": PATIENT, "series_uid": study.mr_series, "window": "lung"}
    )
    assert outcome.error_kind == "tool_failed" and "is for CT" in (outcome.error or "")


def test_the_agent_looks_at_a_crop_in_its_next_step(registry: ToolRegistry, study: Study) -> None:
    image = load_model_image(study.paths[1], preset="mediastinum")
    crop_call = {
        "tool": "windowed_crop",
        "arguments": {"patient_id": PATIENT, "series_uid": study.series_uid, "window": "bone"},
    }
    model = ScriptedModel(
        [json.dumps(crop_call), json.dumps({"tool": WRITE_REPORT}), '{"findings": [], "impression": []}'],
        max_images=2,
    )
    context = PatientContext(patient_id=PATIENT)
    result = run_agent(model, [image], context, registry, max_new_tokens_per_step=400)  # a char a token
    (call,) = [s.detail for s in result.steps if s.kind == "tool_call"]
    assert call["ok"], call
    assert [len(seen["images"]) for seen in model.seen] == [1, 2, 2]
    assert "bone window" in model.seen[1]["prompt"]
    assert [ref.sop_uid for ref in result.tool_image_refs] == [study.sops[1]]


def test_a_tiny_model_calls_imaging_tools_well_formed(
    registry: ToolRegistry, study: Study, tiny_model_dir: Path
) -> None:
    """The imaging argument schemas (floats, enums, optional ints) compile into the step grammar."""
    import torch

    from model.agent import parse_action
    from model.config import ModelConfig
    from model.runtime import load_vlm

    torch.set_num_threads(1)
    vlm = load_vlm(ModelConfig(path=tiny_model_dir, device="cpu", max_new_tokens=64, max_images=2))
    image = load_model_image(study.paths[1], preset="lung")
    result = run_agent(vlm, [image], PatientContext(patient_id=PATIENT), registry, max_steps=3)
    steps = [s.detail for s in result.steps if s.kind == "agent_step"]
    assert steps and all(s["constrained"] and s["stopped"] for s in steps)
    for step in steps:
        parse_action(step["text"])
    for call in (s.detail for s in result.steps if s.kind == "tool_call"):
        assert call["error_kind"] not in ("invalid_arguments", "unknown_tool", "patient_scope"), call
