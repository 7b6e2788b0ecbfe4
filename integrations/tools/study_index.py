"""An index of one study's spooled DICOM files by series, read from headers only (no pixel data).

The imaging tools are built for one study, from the paths its analysis was given: that list is their
whole world, which is what keeps them on the patient under review (a series UID the model makes up is
simply not found). Headers are read once, lazily, the first time a tool needs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from model.dicom_source import DicomFile, read_dicom, source_name
from model.report import ImageRef


@dataclass(frozen=True)
class IndexedInstance:
    """One instance: where it is, its UIDs and how many frames it has."""

    path: DicomFile
    study_uid: str
    series_uid: str
    sop_uid: str
    instance_number: int | None
    frames: int
    has_pixels: bool

    def ref(self, frame: int = 0) -> ImageRef:
        return ImageRef(
            study_uid=self.study_uid, series_uid=self.series_uid, sop_uid=self.sop_uid, frame=frame
        )


@dataclass
class IndexedSeries:
    """A series: its instances in acquisition order and the header of the first one."""

    series_uid: str
    header: Dataset
    instances: list[IndexedInstance] = field(default_factory=list)


def _frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _order_key(instance: IndexedInstance) -> tuple[Any, ...]:
    number = instance.instance_number
    return (number is None, number if number is not None else 0, source_name(instance.path))


class StudyIndex:
    """Series and instances of the files given; unreadable files are counted, not raised."""

    def __init__(self, paths: list[DicomFile]) -> None:
        self.paths = list(paths)
        self._series: dict[str, IndexedSeries] | None = None
        self.unreadable = 0

    def series(self) -> dict[str, IndexedSeries]:
        """Series by UID, in the order their first instance was given."""
        if self._series is None:
            self._series = self._read()
        return self._series

    def _read(self) -> dict[str, IndexedSeries]:
        found: dict[str, IndexedSeries] = {}
        for path in self.paths:
            try:
                ds = read_dicom(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError):
                self.unreadable += 1
                continue
            series_uid = str(ds.get("SeriesInstanceUID", ""))
            sop_uid = str(ds.get("SOPInstanceUID", ""))
            if not series_uid or not sop_uid:
                self.unreadable += 1
                continue
            number = ds.get("InstanceNumber")
            instance = IndexedInstance(
                path=path,
                study_uid=str(ds.get("StudyInstanceUID", "")),
                series_uid=series_uid,
                sop_uid=sop_uid,
                instance_number=int(number) if number not in (None, "") else None,
                frames=_frames(ds),
                has_pixels=bool(ds.get("Rows")) and bool(ds.get("Columns")),
            )
            entry = found.setdefault(series_uid, IndexedSeries(series_uid=series_uid, header=ds))
            entry.instances.append(instance)
        for entry in found.values():
            entry.instances.sort(key=_order_key)
        return found

    def get(self, series_uid: str) -> IndexedSeries | None:
        return self.series().get(series_uid)
