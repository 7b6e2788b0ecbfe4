"""Series and slice selection over synthetic studies written as real DICOM files."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from model.imaging import load_model_image
from model.series_selection import evenly_spaced, select_images

AXIAL = [1, 0, 0, 0, 1, 0]
CORONAL = [1, 0, 0, 0, 0, -1]
STUDY = generate_uid()


def _write(
    path: Path,
    *,
    series_uid: str,
    series_number: int,
    modality: str = "CT",
    z: float | None = None,
    instance: int = 1,
    orientation: list[int] | None = AXIAL,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, series_uid
    ds.SeriesNumber, ds.InstanceNumber, ds.Modality = series_number, instance, modality
    ds.ImageType = list(image_type)
    if orientation is not None:
        ds.ImageOrientationPatient = orientation
        ds.ImagePositionPatient = [0, 0, z if z is not None else float(instance)]
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(16, dtype=np.uint16) * (instance + 1)).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _ct_study(root: Path) -> tuple[list[Path], list[Path]]:
    """20 axial slices (instance numbers shuffled against position), a localizer, a coronal MPR, a SEG."""
    axial_uid = generate_uid()
    zs = [float(z) for z in range(100, 0, -5)]  # instance 1 is the highest slice
    axial = [
        _write(root / f"ax{i}.dcm", series_uid=axial_uid, series_number=3, z=z, instance=i + 1)
        for i, z in enumerate(zs)
    ]
    scout = _write(
        root / "scout.dcm",
        series_uid=generate_uid(),
        series_number=1,
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    )
    coronal_uid = generate_uid()
    coronal = [
        _write(
            root / f"cor{i}.dcm",
            series_uid=coronal_uid,
            series_number=4,
            orientation=CORONAL,
            instance=i + 1,
            image_type=("DERIVED", "SECONDARY", "REFORMATTED"),
        )
        for i in range(30)
    ]
    seg = _write(root / "seg.dcm", series_uid=generate_uid(), series_number=9, modality="SEG")
    (root / "junk.dcm").write_bytes(b"not dicom")
    everything = [*axial, scout, *coronal, seg, root / "junk.dcm"]
    random.Random(0).shuffle(everything)
    by_position = sorted(axial, key=lambda p: int(p.name[2:-4]))  # ax0 is z=100: top-down order
    return everything, by_position


def test_ct_picks_evenly_spaced_axial_original_slices(tmp_path: Path) -> None:
    paths, axial_top_down = _ct_study(tmp_path)
    picked = select_images(paths, max_images=4)
    assert len(picked) == 4
    assert all(p.name.startswith("ax") for p in picked)
    bottom_up = list(reversed(axial_top_down))
    positions = [bottom_up.index(p) for p in picked]
    assert positions == sorted(positions) and positions[0] > 0 and positions[-1] < 19
    assert min(np.diff(positions)) >= 3  # spread over the stack, not clustered


def test_small_budget_and_whole_short_series(tmp_path: Path) -> None:
    paths, _ = _ct_study(tmp_path)
    assert len(select_images(paths, max_images=1)) == 1
    assert len(select_images(paths, max_images=25)) == 25  # 20 axial, then 5 from the coronal MPR


def test_radiograph_views_fill_from_several_series(tmp_path: Path) -> None:
    pa = _write(
        tmp_path / "pa.dcm", series_uid=generate_uid(), series_number=1, modality="CR", orientation=None
    )
    lat = _write(
        tmp_path / "lat.dcm", series_uid=generate_uid(), series_number=2, modality="CR", orientation=None
    )
    assert select_images([lat, pa], max_images=4) == [pa, lat]


def test_selected_files_load_as_model_images(tmp_path: Path) -> None:
    paths, _ = _ct_study(tmp_path)
    images = [load_model_image(p) for p in select_images(paths, max_images=2)]
    assert [im.ref.study_uid for im in images] == [STUDY, STUDY]
    assert all(im.image.size == (4, 4) for im in images)


def test_evenly_spaced_avoids_the_ends() -> None:
    assert evenly_spaced(20, 4) == [4, 8, 11, 15]
    assert evenly_spaced(3, 5) == [0, 1, 2]
    with pytest.raises(ValueError, match="max_images must be at least 1"):
        select_images([], max_images=0)


def test_multiframe_instance_spreads_over_its_frames() -> None:
    from pydicom.data import get_testdata_file

    from model.series_selection import select_frames

    cine = Path(str(get_testdata_file("emri_small.dcm")))  # one instance, 10 frames
    frames = select_frames([cine], max_images=4)
    assert frames == [(cine, i) for i in evenly_spaced(10, 4)]
    assert select_images([cine], max_images=4) == [cine]
    images = [load_model_image(path, frame=frame) for path, frame in frames]
    assert [im.ref.frame for im in images] == [f for _, f in frames]
    assert len({np.asarray(im.image).tobytes() for im in images}) == 4  # four different slices
