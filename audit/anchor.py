"""Copies of every signed checkpoint kept outside the database.

Whoever can rewrite the database cannot rewrite these, so ``verify`` trusts the anchor, not the table.
Each checkpoint is one file, ``checkpoint-<size>-<timestamp>.note``, written atomically; the newest is
the one with the largest (size, timestamp).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import httpx

logger = logging.getLogger(__name__)

NOTE_NAME = re.compile(r"^checkpoint-(\d{15})-(\d{15})\.note$")
HTTP_TIMEOUT_S = 5.0


def anchor_file_name(size: int, timestamp_ms: int) -> str:
    return f"checkpoint-{size:015d}-{timestamp_ms:015d}.note"


def write_directory_anchor(directory: Path, size: int, timestamp_ms: int, note: str) -> Path:
    """Write one note durably (temp file, fsync, rename) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / anchor_file_name(size, timestamp_ms)
    tmp = directory / f".{final.name}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(note)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    return final


def post_http_anchor(url: str, note: str) -> bool:
    """POST the note to a remote witness. Best effort: the directory anchor is the one relied on."""
    try:
        response = httpx.post(
            url, content=note.encode(), headers={"Content-Type": "text/plain"}, timeout=HTTP_TIMEOUT_S
        )
        response.raise_for_status()
    except httpx.HTTPError as exc:
        logger.warning("checkpoint anchor %s refused or unreachable: %s", url, type(exc).__name__)
        return False
    return True


def anchored_notes(directory: Path) -> list[tuple[int, int, str]]:
    """All anchored notes as (size, timestamp_ms, text), oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = NOTE_NAME.match(path.name)
        if match:
            found.append((int(match[1]), int(match[2]), path.read_text(encoding="utf-8")))
    return sorted(found)
