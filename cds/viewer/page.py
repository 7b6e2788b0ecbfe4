"""HTML of the viewer: the report page, its reload fragment and the error page (Jinja2, autoescaped)."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from cds.viewer.errors import ViewerRefusal
from cds.viewer.key_images import PRESETS
from cds.viewer.report_view import ReportView

_HERE = Path(__file__).parent
_env = Environment(
    loader=FileSystemLoader(_HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_page(view: ReportView | None, *, base: str, handle: str | None = None) -> str:
    """The full page; ``view`` None gives the shell that loads the report with the stored handle."""
    title = f"AI draft: {view.summary}" if view else "AI draft"
    return _env.get_template("layout.html").render(
        view=view, base=base, handle=handle, title=title, presets=PRESETS, error=None
    )


def render_fragment(view: ReportView, *, base: str) -> str:
    return _env.get_template("report.html").render(view=view, base=base)


def render_error(refusal: ViewerRefusal, *, base: str) -> str:
    return _env.get_template("layout.html").render(
        view=None, base=base, handle=None, title=refusal.title, presets=PRESETS, error=refusal
    )


def static_file(name: str) -> bytes:
    return (_HERE / "static" / name).read_bytes()
