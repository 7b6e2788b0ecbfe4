"""Windowed PNG renderings of the study's key images, for an authenticated viewer session only.

Pixel data never leaves the server as DICOM: the instance is decoded here through the same path the
model used (``model.imaging.load_model_image``), windowed with a named preset, and sent as PNG.
"""

from __future__ import annotations

import io
from typing import Literal

from cds.viewer.errors import ViewerRefusal
from integrations.dicom.spool import Spool, SpoolIntegrityError, is_purged
from model.imaging import DicomImageError, load_model_image
from model.windowing import CT_PRESETS

ImageSize = Literal["thumb", "large"]
MAX_SIDE: dict[str, int] = {"thumb": 192, "large": 768}
PRESETS: tuple[str, ...] = ("default", *sorted(CT_PRESETS))


def render_png(spool: Spool, spool_path: str, *, frame: int, preset: str, size: ImageSize) -> bytes:
    """Decode one frame and return PNG bytes; raises ``ViewerRefusal`` for a bad preset or file."""
    if preset not in PRESETS:
        raise ViewerRefusal(400, "Unknown window preset", f"choose one of {', '.join(PRESETS)}.")
    if is_purged(spool_path):
        raise ViewerRefusal(410, "Image removed", "the retention policy deleted this image.")
    try:
        spool.absolute(spool_path)
    except ValueError as exc:
        raise ViewerRefusal(404, "Image not found", "the instance is outside the spool.") from exc
    try:
        image = load_model_image(
            spool.stored(spool_path),
            preset=None if preset == "default" else preset,
            frame=frame,
            max_side=MAX_SIDE[size],
        )
    except DicomImageError as exc:
        if isinstance(exc.__cause__, SpoolIntegrityError):
            raise ViewerRefusal(
                500, "The stored image failed its integrity check", "the incident is in the audit log."
            ) from exc
        raise ViewerRefusal(422, "The image cannot be rendered", type(exc).__name__) from exc
    except (ValueError, OSError) as exc:
        raise ViewerRefusal(422, "The image cannot be rendered", type(exc).__name__) from exc
    buffer = io.BytesIO()
    image.image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
