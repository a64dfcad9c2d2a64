"""The report's own figure: every checked claim's worst error against its tolerance.

The experiments draw the paper's figures themselves (into ``figures/``); this module
draws only the summary, one bar per claim, on a log axis where 1 is the tolerance.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gracheck.base.files import save_figure

# Status colours (the report always prints the word too; colour is never the only cue).
STATUS_COLOURS = {
    "verified": "#1a7f37",
    "erratum-confirmed": "#0969da",
    "refuted": "#bc4c00",
    "inconclusive": "#8250df",
    "failed": "#cf222e",
    "skipped": "#6e7781",
}


def summary_figure(entries: list[dict[str, Any]], path: Path, base: Path) -> str | None:
    """Draw worst error / allowed tolerance per claim into ``path``; return its path relative to ``base``.

    Claims without a comparable error (skipped, or checks that report no tolerance) are
    left out and named in the caption. Returns None when no claim has a ratio.
    """
    rows = [(e["id"], e["status"], e["worst"]["ratio"]) for e in entries if e.get("worst")]
    rows = [(i, s, r) for i, s, r in rows if r is not None and not math.isnan(r)]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    positive = [r for _, _, r in rows if r > 0]
    floor = max(min(positive) / 100, 1e-18) if positive else 1e-6
    floor = min(floor, 1e-2)
    vals = [min(max(r, floor), 1e6) for _, _, r in rows]
    n = len(rows)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.32 * n), dpi=110)
    try:
        y = list(range(n))[::-1]
        ax.barh(y, vals, left=floor, color=[STATUS_COLOURS.get(s, "#6e7781") for _, s, _ in rows], height=0.65)
        ax.set_xscale("log")
        ax.set_yticks(y)
        ax.set_yticklabels([f"{i}  [{s}]" for i, s, _ in rows], fontsize=8)
        ax.axvline(1.0, color="black", linestyle="--", linewidth=1.2)
        ax.set_xlim(floor, max(10.0, max(vals) * 3))
        ax.set_xlabel("worst error / allowed error (dimensionless, log scale; < 1 passes)")
        ax.set_ylim(-0.6, n - 0.4)
        ax.set_title("Each check's worst error relative to its tolerance")
        present = [s for s in STATUS_COLOURS if any(st == s for _, st, _ in rows)]
        handles = [plt.Rectangle((0, 0), 1, 1, color=STATUS_COLOURS[s]) for s in present]
        ax.legend(
            [*handles, ax.lines[0]],
            [*present, "tolerance (error = allowed)"],
            fontsize=8,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0.0,
        )
        ax.grid(axis="x", which="major", alpha=0.3)
        fig.tight_layout()
        save_figure(fig, path)
    finally:
        plt.close(fig)
    return path.resolve().relative_to(base.resolve()).as_posix()
