"""Small SVG line charts of rates (0..1) against attack budget; no plotting library needed."""

from __future__ import annotations

import html
from typing import Sequence

COLOURS = ("#c0392b", "#2471a3", "#7f8c8d", "#27ae60", "#8e44ad")
WIDTH, HEIGHT = 420, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 110, 28, 40


def line_chart(title: str, x_label: str, xs: Sequence[float], series: dict[str, Sequence[float | None]]) -> str:
    """Rates as lines over evenly spaced budget ticks (budgets are often geometric)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = len(xs)

    def x_at(i: int) -> float:
        return LEFT + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y_at(v: float) -> float:
        return TOP + plot_h * (1 - v)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">',
        f'<text x="{LEFT}" y="16" font-size="13">{html.escape(title)}</text>',
    ]
    for tick in (0, 0.25, 0.5, 0.75, 1):
        y = y_at(tick)
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{int(tick * 100)}%</text>')
    for i, x in enumerate(xs):
        parts.append(f'<text x="{x_at(i):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{x:g}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle">{html.escape(x_label)}</text>')
    for k, (name, values) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        points = [(x_at(i), y_at(v)) for i, v in enumerate(values) if v is not None]
        if points:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
            parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in points]
        legend_y = TOP + 14 * k + 6
        parts.append(f'<rect x="{LEFT + plot_w + 12}" y="{legend_y - 8}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{LEFT + plot_w + 26}" y="{legend_y + 1}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
