"""DICOM → model image over pydicom's and pydicom-data's files: modalities, transfer syntaxes, windows."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from model.imaging import DicomImageError, load_model_image
from model.windowing import CT_PRESETS

warnings.filterwarnings("ignore", module="pydicom")


def _file(name: str) -> Path:
    found = get_testdata_file(name)
    assert found is not None, f"{name} missing: install pydicom-data (a dev dependency)"
    return Path(str(found))


def _pixels(name: str, **kw: object) -> np.ndarray:
    return np.asarray(load_model_image(_file(name), **kw).image)  # type: ignore[arg-type]


# Same image stored under different transfer syntaxes / byte orders must decode identically.
LOSSLESS_GROUPS = [
    # explicit LE, implicit LE, explicit BE, RLE, JPEG 2000 lossless, JPEG-LS lossless, padded
    [
        "MR_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_padded.dcm",
    ],
    # 10-frame MR: native, big endian, RLE, JPEG-LS, JPEG 2000
    [
        "emri_small.dcm",
        "emri_small_big_endian.dcm",
        "emri_small_RLE.dcm",
        "emri_small_jpeg_ls_lossless.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
    ],
    ["693_UNCR.dcm", "693_J2KR.dcm"],  # CT, JPEG 2000 reversible
    ["RG1_UNCR.dcm", "RG1_J2KR.dcm"],  # CR MONOCHROME1
    ["US1_UNCR.dcm", "US1_J2KR.dcm"],  # US RGB vs YBR_RCT
    ["SC_rgb.dcm", "SC_rgb_rle.dcm", "SC_rgb_expb.dcm", "SC_rgb_gdcm2k_uncompressed.dcm"],
]


@pytest.mark.parametrize("group", LOSSLESS_GROUPS, ids=lambda g: g[0])
def test_lossless_transfer_syntaxes_decode_identically(group: list[str]) -> None:
    reference = _pixels(group[0])
    for name in group[1:]:
        np.testing.assert_array_equal(_pixels(name), reference, err_msg=name)


# name, modality, mode, (width, height)
CASES = [
    ("CT_small.dcm", "CT", "L", (128, 128)),
    ("693_J2KI.dcm", "CT", "L", (512, 512)),
    ("MR_small.dcm", "MR", "L", (64, 64)),
    ("MR2_J2KI.dcm", "MR", "L", (1024, 1024)),
    ("RG3_J2KI.dcm", "CR", "L", (1024, 1024)),  # 1760 px bounded to 1024
    ("JPEG2000.dcm", "NM", "L", (256, 1024)),
    ("JPGExtended.dcm", "NM", "L", (256, 1024)),
    ("US1_J2KI.dcm", "US", "RGB", (640, 480)),
    ("OBXXXX1A.dcm", "US", "RGB", (800, 600)),  # PALETTE COLOR
    ("gdcm-US-ALOKA-16.dcm", "US", "RGB", (640, 480)),  # 16-bit palette
    ("examples_ybr_color.dcm", "US", "RGB", (320, 240)),  # YBR_FULL_422 JPEG, 30 frames
    ("SC_rgb_jpeg_dcmtk.dcm", "OT", "RGB", (100, 100)),
    ("SC_rgb_32bit.dcm", "OT", "RGB", (100, 100)),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "US", "L", (1024, 768)),
]


@pytest.mark.parametrize(("name", "modality", "mode", "size"), CASES, ids=[c[0] for c in CASES])
def test_modalities_and_syntaxes_give_8bit_images(name: str, modality: str, mode: str, size: tuple) -> None:
    image = load_model_image(_file(name))
    arr = np.asarray(image.image)
    assert image.image.mode == mode and image.image.size == size
    assert arr.dtype == np.uint8
    assert arr.max() > arr.min(), "image collapsed to one grey level"
    assert image.description.startswith(modality)
    ds = dcmread(_file(name), stop_before_pixels=True)
    assert image.ref.sop_uid == ds.SOPInstanceUID and image.ref.study_uid == ds.StudyInstanceUID


def test_lossy_jpeg_2000_is_close_to_lossless() -> None:
    # the file's own 100 HU window magnifies compression error; a bone window shows the anatomy agrees
    lossy = _pixels("693_J2KI.dcm", preset="bone").astype(float).ravel()
    lossless = _pixels("693_UNCR.dcm", preset="bone").astype(float).ravel()
    assert np.corrcoef(lossy, lossless)[0, 1] > 0.97
    assert np.abs(lossy - lossless).mean() < 5


def test_ybr_and_16_bit_rgb_match_8_bit_rgb() -> None:
    rgb = _pixels("SC_rgb.dcm").astype(int)
    ybr = np.abs(_pixels("SC_ybr_full_uncompressed.dcm").astype(int) - rgb)
    assert ybr.max() <= 8 and ybr.mean() < 1
    assert np.abs(_pixels("SC_rgb_16bit.dcm").astype(int) - rgb).max() <= 1
    assert np.abs(_pixels("SC_rgb_dcmtk_+eb+cy+np.dcm").astype(int) - rgb).mean() < 3  # JPEG YBR_FULL_422


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    ds = dcmread(_file("RG1_UNCR.dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    ds.PhotometricInterpretation = "MONOCHROME2"
    flipped = tmp_path / "mono2.dcm"
    ds.save_as(flipped)
    inverted = 255 - np.asarray(load_model_image(flipped).image).astype(int)
    assert np.abs(_pixels("RG1_UNCR.dcm").astype(int) - inverted).max() <= 1  # rounding at .5 only


def test_ct_presets_window_hounsfield_units() -> None:
    ds = dcmread(_file("CT_small.dcm"))
    hu = apply_modality_lut(ds.pixel_array, ds)
    for preset, window in CT_PRESETS.items():
        arr = _pixels("CT_small.dcm", preset=preset)
        low, high = window.center - window.width / 2, window.center + window.width / 2
        assert (arr[hu <= low] == 0).all(), preset
        assert (arr[hu >= high] == 255).all(), preset
        inside = (hu > low + 5) & (hu < high - 5)
        assert ((arr[inside] > 0) & (arr[inside] < 255)).all(), preset
        order = np.argsort(hu[inside], kind="stable")
        assert (np.diff(arr[inside][order].astype(int)) >= 0).all(), f"{preset} not monotonic in HU"
    assert not np.array_equal(_pixels("CT_small.dcm", preset="lung"), _pixels("CT_small.dcm", preset="brain"))


def test_preset_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="unknown window preset 'liver'"):
        load_model_image(_file("CT_small.dcm"), preset="liver")
    with pytest.raises(ValueError, match="is for CT, not modality 'MR'"):
        load_model_image(_file("MR_small.dcm"), preset="lung")
    with pytest.raises(ValueError, match="grayscale"):
        load_model_image(_file("SC_rgb.dcm"), preset="lung")


def test_voi_lut_and_modality_lut_files_use_the_full_range() -> None:
    for name in ("vlut_04.dcm", "mlut_18.dcm"):
        arr = _pixels(name)
        assert arr.min() == 0 and arr.max() == 255, name


def test_multiframe_defaults_to_middle_frame_and_can_pick_one() -> None:
    middle = load_model_image(_file("emri_small.dcm"))
    assert middle.ref.frame == 5 and "frame 6 of 10" in middle.description
    first = load_model_image(_file("emri_small.dcm"), frame=0)
    assert first.ref.frame == 0
    assert not np.array_equal(np.asarray(first.image), np.asarray(middle.image))
    assert first.ref.citation_id != middle.ref.citation_id
    with pytest.raises(DicomImageError, match=r"frame 10 out of range 0\.\.9"):
        load_model_image(_file("emri_small.dcm"), frame=10)


def test_non_square_pixels_are_resampled_and_size_bounded(tmp_path: Path) -> None:
    ds = dcmread(_file("MR_small.dcm"))
    ds.PixelSpacing = [1.0, 0.5]  # rows 1 mm apart, columns 0.5 mm: the image is half as wide as tall
    path = tmp_path / "aniso.dcm"
    ds.save_as(path)
    assert load_model_image(path).image.size == (32, 64)
    assert load_model_image(_file("MR2_UNCR.dcm"), max_side=256).image.size == (256, 256)


def test_unusable_files_raise_dicom_image_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not dicom")
    with pytest.raises(DicomImageError, match="not a readable DICOM file"):
        load_model_image(text)
    with pytest.raises(DicomImageError, match="has no pixel data"):
        load_model_image(_file("test-SR.dcm"))
    with pytest.raises(DicomImageError, match="could not be decoded"):
        load_model_image(_file("MR_truncated.dcm"))
