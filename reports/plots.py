"""The report's own pictures (the stages draw theirs): the gate chart and the comparison's privacy-utility plot.
PNG bytes, deterministic for the same inputs (no timestamps in the files)."""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

STATUS_COLOURS = {"pass": "#1a7f37", "warn": "#b35900", "fail": "#c0182b", "error": "#6e7781"}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def gate_chart_png(results: Sequence[dict[str, Any]]) -> bytes | None:
    """One row per gate that has a figure: the estimate, its CI and the threshold, coloured by the outcome."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.get("estimate") and _finite(r["estimate"].get("value"))]
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), 1, figsize=(7.5, 0.72 * len(rows) + 0.5), squeeze=False)
    for ax, row in zip(axes[:, 0], rows):
        est, colour = row["estimate"], STATUS_COLOURS[row["status"]]
        value = est["value"]
        lo = est["ci_low"] if _finite(est.get("ci_low")) else value
        hi = est["ci_high"] if _finite(est.get("ci_high")) else value
        ax.errorbar([value], [0], xerr=[[value - lo], [hi - value]], fmt="o", color=colour, capsize=4, lw=2)
        ax.axvline(row["threshold"], color="#24292f", ls="--", lw=1)
        span = [lo, hi, row["threshold"], value]
        width = (max(span) - min(span)) or abs(row["threshold"]) or 1.0
        ax.set_xlim(min(span) - 0.15 * width, max(span) + 0.15 * width)
        ax.set_yticks([])
        ax.set_ylim(-1, 1)
        label = row.get("title") or row["metric"]
        ax.set_title(f"{label}  [{row['status'].upper()}: {row['on']} {row['op']} {row['threshold']:g}]",
                     fontsize=8.5, loc="left", color=colour)
        ax.tick_params(axis="x", labelsize=8)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
    fig.tight_layout()
    return _png(fig)


def frontier_png(points: Sequence[dict[str, Any]], risk_name: str, worth_name: str, risk_higher_is_better: bool,
                 worth_higher_is_better: bool, frontier: Sequence[str]) -> bytes:
    """Models as points (privacy risk → x, worth → y), each with its CI on both axes; the Pareto frontier joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    by_label = {}
    for i, p in enumerate(points):
        x, y = p["risk"], p["worth"]
        colour = plt.cm.tab10(i % 10)
        ax.errorbar([x["value"]], [y["value"]],
                    xerr=[[x["value"] - x["ci_low"]], [x["ci_high"] - x["value"]]] if _finite(x.get("ci_low")) else None,
                    yerr=[[y["value"] - y["ci_low"]], [y["ci_high"] - y["value"]]] if _finite(y.get("ci_low")) else None,
                    fmt="o", color=colour, capsize=4, label=f"{p['label']} ({p['verdict']})")
        by_label[p["label"]] = (x["value"], y["value"])
    line = sorted((by_label[name] for name in frontier if name in by_label), key=lambda xy: xy[0])
    if len(line) > 1:
        ax.plot([a for a, _ in line], [b for _, b in line], color="#57606a", ls=":", lw=1.2, label="frontier")
    ax.set_xlabel(f"{risk_name} ({'higher' if risk_higher_is_better else 'lower'} is safer)")
    ax.set_ylabel(f"{worth_name} ({'higher' if worth_higher_is_better else 'lower'} is better)")
    ax.set_title("privacy risk vs worth (points with 95% CIs)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)
