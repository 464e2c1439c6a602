"""Small SVG line charts drawn on the server: they work without JavaScript and swap
in over the websocket like any other partial."""

from __future__ import annotations

from html import escape

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")


def _downsample(points: list[tuple[float, float]], limit: int) -> list[tuple[float, float]]:
    if len(points) <= limit:
        return points
    stride = len(points) / limit
    picked = [points[int(i * stride)] for i in range(limit)]
    picked[-1] = points[-1]
    return picked


def line_chart_svg(series: dict[str, list[tuple[float, float]]], *, width: int = 360,
                   height: int = 120, max_points: int = 300) -> str:
    """One polyline per named series on shared axes, with a legend of last values."""
    series = {k: _downsample(v, max_points) for k, v in series.items() if v}
    if not series:
        return ""
    pad_l, pad_r, pad_t, pad_b = 44, 8, 8, 18
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b

    def sx(x):
        return pad_l + (x - x0) / (x1 - x0) * plot_w

    def sy(y):
        return pad_t + (1 - (y - y0) / (y1 - y0)) * plot_h

    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="metrics chart">',
        f'<rect x="{pad_l}" y="{pad_t}" width="{plot_w}" height="{plot_h}" class="chart-bg"/>',
        f'<text x="{pad_l - 4}" y="{pad_t + 8}" text-anchor="end" class="chart-tick">{y1:.3g}</text>',
        f'<text x="{pad_l - 4}" y="{pad_t + plot_h}" text-anchor="end" class="chart-tick">{y0:.3g}</text>',
        f'<text x="{pad_l}" y="{height - 4}" class="chart-tick">{x0:g}</text>',
        f'<text x="{width - pad_r}" y="{height - 4}" text-anchor="end" class="chart-tick">{x1:g}</text>',
    ]
    for i, (name, pts) in enumerate(sorted(series.items())):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}">'
                     f"<title>{escape(name)}</title></polyline>")
        parts.append(f'<text x="{pad_l + 6}" y="{pad_t + 12 + 12 * i}" fill="{color}" '
                     f'class="chart-legend">{escape(name)} {pts[-1][1]:.4g}</text>')
    parts.append("</svg>")
    return "".join(parts)
