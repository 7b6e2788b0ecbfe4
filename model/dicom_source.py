"""Where a DICOM file is read from: a plain path, or a stored object that decrypts as it is read.

The spool may keep received files encrypted at rest (`integrations/dicom/spool.py`). `model` knows nothing
of the spool, so the readers here take either a filesystem path (tests, tools, a plaintext file) or any
object with a `name` and an `open_binary()` that yields the plaintext Part 10 bytes. pydicom reads both
the same way; nothing is decrypted to disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Protocol, TypeAlias, TypeVar, runtime_checkable

from pydicom import dcmread
from pydicom.dataset import FileDataset


@runtime_checkable
class StoredDicom(Protocol):
    """A DICOM file kept somewhere that must be opened through its keeper (e.g. an encrypted spool)."""

    @property
    def name(self) -> str:
        """A label for messages and tie-breaking order; never patient data."""
        ...

    def open_binary(self) -> BinaryIO:
        """The plaintext Part 10 bytes, readable and seekable; the caller closes it."""
        ...


DicomFile: TypeAlias = "str | os.PathLike[str] | StoredDicom"
SourceT = TypeVar("SourceT", bound="str | os.PathLike[str] | StoredDicom")


def open_dicom(source: DicomFile) -> BinaryIO:
    """Open `source` for reading its plaintext bytes."""
    if isinstance(source, StoredDicom):
        return source.open_binary()
    return Path(source).open("rb")


def source_name(source: DicomFile) -> str:
    """The file name for messages (no directories: they may say where a spool lives)."""
    return source.name if isinstance(source, StoredDicom) else Path(source).name


def source_order(source: DicomFile) -> str:
    """A stable sort key: the full path of a plain file, the name of a stored object."""
    return source.name if isinstance(source, StoredDicom) else os.fspath(source)


def read_dicom(source: DicomFile, *, stop_before_pixels: bool = False) -> FileDataset:
    """`pydicom.dcmread` over `source`; the file is closed before returning (nothing is read lazily)."""
    with open_dicom(source) as fp:
        return dcmread(fp, stop_before_pixels=stop_before_pixels)
