"""The lineage graph as SVG: ancestors above, the version in the middle, descendants below,
each node a link to its version."""

from __future__ import annotations

from html import escape

NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 150, 34, 24, 46, 12


def lineage_svg(graph: dict, url_for) -> str:
    """`graph` from selectors.lineage; `url_for(version)` gives each node's link."""
    levels = [*reversed(graph["ancestors"]), [graph["version"]], *graph["descendants"]]
    width = max(len(level) for level in levels) * (NODE_W + GAP_X) - GAP_X + 2 * PAD
    height = len(levels) * (NODE_H + GAP_Y) - GAP_Y + 2 * PAD
    pos = {}
    for row, level in enumerate(levels):
        row_w = len(level) * (NODE_W + GAP_X) - GAP_X
        x0 = (width - row_w) / 2
        for col, v in enumerate(level):
            pos[v.pk] = (x0 + col * (NODE_W + GAP_X), PAD + row * (NODE_H + GAP_Y))
    parts = [f'<svg class="lineage" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} '
             f'{height:.0f}" width="{width:.0f}" height="{height:.0f}" role="img" '
             f'aria-label="lineage">']
    for parent, child in graph["edges"]:
        if parent in pos and child in pos:
            (px, py), (cx, cy) = pos[parent], pos[child]
            parts.append(f'<line x1="{px + NODE_W / 2:.0f}" y1="{py + NODE_H:.0f}" '
                         f'x2="{cx + NODE_W / 2:.0f}" y2="{cy:.0f}" class="edge"/>')
    for level in levels:
        for v in level:
            x, y = pos[v.pk]
            current = " current" if v.pk == graph["version"].pk else ""
            label = f"{v.asset.name}@{v.number}"
            short = label if len(label) <= 22 else label[:21] + "…"
            parts.append(
                f'<a href="{escape(url_for(v))}"><g class="node{current}">'
                f'<title>{escape(label)}</title>'
                f'<rect x="{x:.0f}" y="{y:.0f}" width="{NODE_W}" height="{NODE_H}" rx="6"/>'
                f'<text x="{x + NODE_W / 2:.0f}" y="{y + NODE_H / 2 + 4:.0f}" '
                f'text-anchor="middle">{escape(short)}</text></g></a>')
    parts.append("</svg>")
    return "".join(parts)
