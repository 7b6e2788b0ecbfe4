"""The one error the viewer raises for a refused launch or request: shown as a page, never a stack."""

from __future__ import annotations


class ViewerRefusal(Exception):
    """A launch or request the viewer refuses; ``title`` and ``detail`` are shown to the clinician.

    Neither may hold patient data: they reach the page and, through ``title``, the log.
    """

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(title)
        self.status, self.title, self.detail = status, title, detail
