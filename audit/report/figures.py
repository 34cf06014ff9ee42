"""Report figures as PNG bytes (matplotlib, Agg canvas).

Figures are built on ``matplotlib.figure.Figure`` with an explicit Agg canvas rather than through
``pyplot``: no global figure registry (nothing to leak or close), no backend switching in a library,
and safe in threads. Scores come through :func:`audit.stats.collapse_scores`, the same one-score-per-work
view the statistics use, so a figure never shows data the tests did not see.
"""
from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from audit.stats import collapse_scores, roc_points
from audit.types import ROLES, ScoreTable

__all__ = ["roc_png", "histogram_png", "to_base64"]

_ROLE_COLOURS = {"suspect": "#d95f02", "control": "#1b9e77", "member": "#7570b3", "nonmember": "#666666"}


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # Fixed metadata keeps the bytes independent of the matplotlib version string.
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def to_base64(png: bytes) -> str:
    """ASCII base64 of PNG bytes, for a ``data:image/png;base64,...`` URI."""
    return base64.b64encode(png).decode("ascii")


def _roc_pairs(scores: ScoreTable) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(attack, label, pos, neg) per attack: members vs nonmembers when present, else suspects vs controls."""
    out = []
    for attack in scores.attacks:
        df, _ = collapse_scores(scores, attack)
        s = {r: df.loc[df["role"] == r, "score"].to_numpy(dtype=float) for r in ROLES}
        if s["member"].size and s["nonmember"].size:
            out.append((attack, "member vs nonmember", s["member"], s["nonmember"]))
        elif s["suspect"].size and s["control"].size:
            out.append((attack, "suspect vs control", s["suspect"], s["control"]))
    return out


def roc_png(scores: ScoreTable) -> bytes | None:
    """ROC curves of every attack, linear and log–log (the low-FPR regime). None if no attack has both classes."""
    pairs = _roc_pairs(scores)
    if not pairs:
        return None
    fig = Figure(figsize=(10, 4.4))
    ax_lin, ax_log = fig.subplots(1, 2)
    for attack, label, pos, neg in pairs:
        r = roc_points(pos, neg)
        name = f"{attack} ({label}, AUC {r.auc:.3f})"
        ax_lin.plot(r.fpr, r.tpr, drawstyle="steps-post", label=name)
        # Log axes cannot show 0; clip to half a step below the smallest non-zero rate each curve can have.
        ax_log.plot(
            np.clip(r.fpr, 0.5 / neg.size, 1), np.clip(r.tpr, 0.5 / pos.size, 1), drawstyle="steps-post", label=name
        )
    for ax in (ax_lin, ax_log):
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
    ax_lin.set_xlim(0, 1)
    ax_lin.set_ylim(0, 1.01)
    ax_lin.set_title("ROC")
    ax_log.set_xscale("log")
    ax_log.set_yscale("log")
    ax_log.set_title("ROC, log scale (low-FPR regime)")
    ax_lin.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def histogram_png(scores: ScoreTable, attack: str) -> bytes:
    """Overlaid score histograms of each role present for ``attack``, on shared bins, as densities."""
    df, _ = collapse_scores(scores, attack)
    vals = df["score"].to_numpy(dtype=float)
    lo, hi = float(vals.min()), float(vals.max())
    if lo == hi:  # a constant score still gets a visible bar
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.histogram_bin_edges(vals, bins=min(40, max(10, int(np.sqrt(vals.size)) * 2)), range=(lo, hi))
    fig = Figure(figsize=(6, 3.4))
    ax = fig.subplots()
    for role in ROLES:
        x = df.loc[df["role"] == role, "score"].to_numpy(dtype=float)
        if x.size:
            # Densities, not counts: role sizes differ by orders of magnitude (40 suspects, 1000 nonmembers).
            ax.hist(x, bins=bins, density=True, histtype="stepfilled", alpha=0.35, color=_ROLE_COLOURS[role],
                    edgecolor=_ROLE_COLOURS[role], label=f"{role} (n={x.size})")
    ax.set_xlabel(f"score ({attack}); higher = more member-like")
    ax.set_ylabel("density")
    ax.set_title(f"Scores by role: {attack}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)
