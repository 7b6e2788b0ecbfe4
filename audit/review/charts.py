"""Server-side SVG line charts for the dashboards: no script, no CDN, readable by screen readers.

Each chart is an ``<svg role="img">`` with a title and description, one line per model version told apart
by colour *and* dash pattern (so it does not rely on colour alone), and the page puts the same numbers
in a table beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from html import escape

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 40
# Dark enough for 3:1 against white (WCAG 1.4.11 non-text contrast).
PALETTE = ("#1f4e9c", "#b1361e", "#2e6b30", "#6a3d9a", "#8a5a00")
DASHES = ("", "6 4", "2 3", "10 3 2 3", "1 5")


def every_period(first: date, last: date, bucket: str) -> list[date]:
    """All periods from ``first`` to ``last``: an empty week still takes its place on the time axis."""
    step = timedelta(days=7 if bucket == "week" else 1)
    periods, current = [], first
    while current <= last:
        periods.append(current)
        current += step
    return periods


@dataclass(frozen=True)
class Line:
    label: str
    points: dict[date, float]


def line_chart(
    title: str, periods: Sequence[date], lines: Sequence[Line], *, percent: bool, chart_id: str
) -> str:
    """An SVG line chart of ``lines`` over ``periods``; values are fractions when ``percent``."""
    highest = max([1.0, *(v for line in lines for v in line.points.values())])
    top_value = 1.0 if percent else float(math.ceil(highest / 4) * 4)  # four whole-number gridlines
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (plot_w * i / (len(periods) - 1) if len(periods) > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / top_value)

    parts = [
        f'<svg id="{escape(chart_id)}" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{escape(chart_id)}-t {escape(chart_id)}-d" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{escape(chart_id)}-t">{escape(title)}</title>',
        f'<desc id="{escape(chart_id)}-d">{len(lines)} model version(s) over {len(periods)} period(s); '
        "the table below has the same numbers.</desc>",
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#555"/>',
    ]
    for step in range(5):
        value = top_value * step / 4
        label = f"{value * 100:.0f}%" if percent else f"{value:.0f}"
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            'stroke="#ddd"/>'
            f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="11">{label}</text>'
        )
    for i, period in enumerate(periods):
        if len(periods) <= 8 or i % max(1, len(periods) // 8) == 0:
            parts.append(
                f'<text x="{x(i):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" '
                f'font-size="11">{period.isoformat()[5:]}</text>'
            )
    for n, line in enumerate(lines):
        colour, dash = PALETTE[n % len(PALETTE)], DASHES[n % len(DASHES)]
        coords = [(x(i), y(line.points[p])) for i, p in enumerate(periods) if p in line.points]
        if not coords:
            continue
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in coords)
        parts.append(
            f'<polyline class="series" data-label="{escape(line.label)}" points="{path}" fill="none" '
            f'stroke="{colour}" stroke-width="2"{dash_attr}/>'
        )
        parts += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"/>' for px, py in coords]
        legend_y = TOP + 14 + 14 * n
        parts.append(
            f'<line x1="{LEFT + 8}" x2="{LEFT + 30}" y1="{legend_y - 4}" y2="{legend_y - 4}" '
            f'stroke="{colour}" stroke-width="2"{dash_attr}/>'
            f'<text x="{LEFT + 34}" y="{legend_y}" font-size="11">{escape(line.label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
