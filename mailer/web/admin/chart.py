"""The report's chart, drawn on the server as SVG: no script, nothing fetched, escaped labels.

Pure: counts in, markup out. Each row is one destination domain (or language), a bar split
by outcome; content rejections have their own loud colour, because they mean a provider
refused what we wrote, not where we sent it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

__all__ = ["COLOURS", "stacked_bars"]

# Outcome -> fill. Colour-blind-safe (Okabe-Ito); the legend names each one too.
COLOURS: Mapping[str, str] = {
    "sent": "#009E73",
    "deferred": "#E69F00",
    "queued": "#999999",
    "sending": "#56B4E9",
    "failed": "#000000",
    "bounced": "#0072B2",
    "content_rejected": "#D55E00",
    "suppressed": "#CC79A7",
    "cancelled": "#F0E442",
}


def stacked_bars(rows: Sequence[tuple[str, Mapping[str, int]]], labels: Mapping[str, str],
                 *, title: str, width: int = 640, bar: int = 18) -> str:
    """One horizontal bar per row, its segments the outcomes in ``COLOURS`` order, each bar as
    long as its row's share of the largest row; ``labels`` names the outcomes in the legend."""
    label_w, gap, legend_h = 160, 6, 22
    plot_w = width - label_w - 60
    biggest = max((sum(c.values()) for _, c in rows), default=0) or 1
    height = legend_h + len(rows) * (bar + gap) + gap
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
           f"<title>{escape(title)}</title>"]
    x = 0
    for state, colour in COLOURS.items():
        name = escape(labels.get(state, state))
        out.append(f'<rect x="{x}" y="4" width="12" height="12" fill="{colour}"/>'
                   f'<text x="{x + 16}" y="14" font-size="11">{name}</text>')
        x += 16 + 7 * len(labels.get(state, state)) + 14
    for i, (name, counts) in enumerate(rows):
        y = legend_h + gap + i * (bar + gap)
        total = sum(counts.values())
        out.append(f'<text x="0" y="{y + bar - 5}" font-size="12">{escape(name[:24])}</text>')
        cx = float(label_w)
        for state, colour in COLOURS.items():
            n = counts.get(state, 0)
            if n <= 0:
                continue
            w = plot_w * n / biggest
            out.append(f'<rect x="{cx:.1f}" y="{y}" width="{max(w, 1.0):.1f}" height="{bar}" '
                       f'fill="{colour}"><title>{escape(labels.get(state, state))}: {n}</title></rect>')
            cx += w
        out.append(f'<text x="{cx + 4:.1f}" y="{y + bar - 5}" font-size="12">{total}</text>')
    out.append("</svg>")
    return "".join(out)
