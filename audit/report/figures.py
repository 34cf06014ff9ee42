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

from audit.stats import collapse_scores, noether_power, roc_points
from audit.stats.gates import GateResult
from audit.types import ROLES, ScoreTable

__all__ = ["roc_png", "histogram_png", "to_base64", "pvalue_png", "blind_baseline_png", "placebo_png",
           "positive_control_png", "power_png", "gate_png"]

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


def _roc_pairs(scores: ScoreTable, mode: str = "benchmark", control_role: str = "control"
               ) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(attack, label, pos, neg) per attack. ``benchmark``: members vs nonmembers when present, else suspects vs
    controls; ``suspect_control``: always suspects vs the control set."""
    out = []
    for attack in scores.attacks:
        df, _ = collapse_scores(scores, attack)
        s = {r: df.loc[df["role"] == r, "score"].to_numpy(dtype=float) for r in ROLES}
        if mode == "benchmark" and s["member"].size and s["nonmember"].size:
            out.append((attack, "member vs nonmember", s["member"], s["nonmember"]))
        elif s["suspect"].size and s[control_role].size:
            out.append((attack, f"suspect vs {control_role}", s["suspect"], s[control_role]))
    return out


def roc_png(scores: ScoreTable, mode: str = "benchmark", control_role: str = "control") -> bytes | None:
    """ROC curves of every attack, linear and log–log (the low-FPR regime). None if no attack has both classes."""
    pairs = _roc_pairs(scores, mode, control_role)
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
    # Zero has no place on a log axis: points at 0 are drawn at the shaded band below the smallest rate the
    # data can show (½ of 1/n), labelled "0", so a floor is never mistaken for a measured small rate.
    floors = [(0.5 / neg.size, 0.5 / pos.size) for _, _, pos, neg in pairs]
    fx, fy = min(f[0] for f in floors), min(f[1] for f in floors)
    ax_log.axvspan(fx * 0.8, fx * 1.25, color="#eeeeee", zorder=0)
    ax_log.axhspan(fy * 0.8, fy * 1.25, color="#eeeeee", zorder=0)
    ax_log.set_xlim(fx * 0.8, 1.05)
    ax_log.set_ylim(fy * 0.8, 1.05)
    xt = [t for t in (1e-3, 1e-2, 1e-1, 1.0) if t > fx * 1.25]
    yt = [t for t in (1e-3, 1e-2, 1e-1, 1.0) if t > fy * 1.25]
    ax_log.set_xticks([fx] + xt, ["0"] + [f"{t:g}" for t in xt])
    ax_log.set_yticks([fy] + yt, ["0"] + [f"{t:g}" for t in yt])
    ax_log.minorticks_off()
    ax_lin.legend(fontsize=7, loc="lower right")
    ax_log.legend(fontsize=7, loc="lower right")
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


def pvalue_png(p_conformal: list[float], lam: float, pi0: float, alpha: float, attack: str) -> bytes:
    """Histogram of the suspects' conformal p-values with Storey's π̂₀ level (the flat part of the histogram)."""
    p = np.asarray(p_conformal, dtype=float)
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    bins = np.linspace(0, 1, 21)
    ax.hist(p, bins=bins, density=True, color="#d95f02", alpha=0.6, edgecolor="#d95f02", label=f"suspects (n={p.size})")
    ax.axhline(1.0, ls=":", c="grey", lw=1, label="uniform (no members)")
    ax.axhline(pi0, c="#1b9e77", lw=1.5, label=f"Storey π̂₀ = {pi0:.2f} (λ = {lam:g})")
    ax.axvline(lam, c="#1b9e77", ls="--", lw=0.8)
    ax.axvline(alpha, c="k", ls="--", lw=0.8, label=f"α = {alpha:g}")
    ax.set_xlabel("conformal p-value against the controls")
    ax.set_ylabel("density")
    ax.set_title(f"Per-artwork p-values: {attack}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def blind_baseline_png(g: GateResult) -> bytes:
    """Left: permutation null of the blind cross-fitted AUC with the observed value. Right: the features with
    the largest standardised mean differences (suspects − controls)."""
    d = g.details
    fig = Figure(figsize=(10, 3.6))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.15]})
    null = np.asarray(d["null"], dtype=float)
    ax1.hist(null, bins=30, color="#999999", alpha=0.7, label=f"permuted labels (n={null.size})")
    ax1.axvline(d["auc"], c="#d95f02" if g.status == "fail" else "#1b9e77", lw=2,
                label=f"observed AUC {d['auc']:.3f} (p = {d['p_value']:.3g})")
    ax1.axvline(0.5, c="k", ls=":", lw=0.8)
    ax1.set_xlabel("out-of-fold AUC, model-free features")
    ax1.set_ylabel("count")
    ax1.set_title("Blind baseline: suspects vs controls without the model")
    ax1.legend(fontsize=7, loc="upper left")
    rows = d["per_feature"][:10][::-1]
    y = np.arange(len(rows))
    colours = ["#d95f02" if r["p_holm"] <= d["alpha"] else "#7f7f7f" for r in rows]
    ax2.barh(y, [r["smd"] for r in rows], color=colours)
    ax2.set_yticks(y, [r["feature"] for r in rows], fontsize=7)
    ax2.axvline(0, c="k", lw=0.8)
    ax2.set_xlabel("standardised mean difference (suspects − controls)")
    ax2.set_title("Largest feature differences (orange: Holm p ≤ α)", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def placebo_png(g: GateResult) -> bytes:
    """Left: placebo p-values (uniform if the test is calibrated). Right: empirical FPR vs nominal α, with CIs."""
    d = g.details
    fig = Figure(figsize=(10, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    p = np.asarray(d["p_values"], dtype=float)
    ax1.hist(p, bins=np.linspace(0, 1, 21), density=True, color="#1b9e77", alpha=0.6)
    ax1.axhline(1.0, ls=":", c="grey", lw=1, label="uniform")
    ax1.axvline(d["alpha"], c="k", ls="--", lw=0.8, label=f"α = {d['alpha']:g}")
    ax1.set_xlabel("p-value of the primary test on a placebo split")
    ax1.set_ylabel("density")
    ax1.set_title(f"{d['n_placebo']} placebo splits ({d['n_pseudo_suspect']} vs {d['n_pseudo_control']} controls)",
                  fontsize=9)
    ax1.legend(fontsize=7)
    curve = d["curve"]
    a = np.array([c["alpha"] for c in curve])
    r = np.array([c["rate"] for c in curve])
    lo = np.array([c["lo"] for c in curve])
    hi = np.array([c["hi"] for c in curve])
    ax2.fill_between(a, np.maximum(lo, 1e-4), hi, color="#1b9e77", alpha=0.25, label="Clopper–Pearson CI")
    ax2.plot(a, np.maximum(r, 1e-4), "o-", c="#1b9e77", ms=3, label="empirical FPR")
    ax2.plot([a.min(), a.max()], [a.min(), a.max()], ls=":", c="grey", label="FPR = α")
    ax2.axvline(d["alpha"], c="k", ls="--", lw=0.8)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("nominal α")
    ax2.set_ylabel("empirical false-positive rate")
    ax2.set_title("Placebo FPR vs α", fontsize=9)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def positive_control_png(g: GateResult) -> bytes | None:
    """p-values of the primary test on resampled sets of known members (and the full-set values); None when there
    is no spread of resampled p-values to show (power from an approximation, or every draw at the same p-value):
    a figure of two vertical lines says nothing the gate's sentence does not."""
    d = g.details
    pv = d.get("p_values")
    if pv is None or len(pv) == 0 or float(np.ptp(np.asarray(pv, dtype=float))) == 0.0:
        return None
    fig = Figure(figsize=(6, 3.4))
    ax = fig.subplots()
    if d.get("p_values") is not None:
        lp = np.log10(np.clip(np.asarray(d["p_values"], dtype=float), 1e-300, 1))
        ax.hist(lp, bins=30, color="#7570b3", alpha=0.6,
                label=f"{d['resamples']} draws of {d.get('subset_size', d['n_suspect'])} known members")
        ax.set_ylabel("count")
    ax.axvline(np.log10(d["alpha"]), c="k", ls="--", lw=0.8, label=f"α = {d['alpha']:g}")
    ax.axvline(np.log10(max(d["p_members"], 1e-300)), c="#7570b3", lw=2,
               label=f"all {d['n_member']} members: p = {d['p_members']:.3g}")
    if d.get("p_nonmembers") is not None:
        ax.axvline(np.log10(max(d["p_nonmembers"], 1e-300)), c="#666666", lw=2,
                   label=f"all {d['n_nonmember']} nonmembers: p = {d['p_nonmembers']:.3g}")
    pw = d.get("power") or {}
    rate = pw.get("rate")
    ax.set_title("Positive control" + (f": power {rate * 100:.0f}% at {pw.get('size', d['n_suspect'])} works"
                                       if rate is not None else ""), fontsize=9)
    ax.set_xlabel("log10 p-value of the primary test (members in place of suspects)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def power_png(g: GateResult) -> bytes | None:
    """Approximate power vs number of suspect works at each measured effect (Noether), with the measured
    (resampled) power at the audit's size when known members were given; None without a curve to draw (a single
    measured point is said in the gate's sentence)."""
    d = g.details
    if not d.get("rows"):
        return None
    fig = Figure(figsize=(6, 3.4))
    ax = fig.subplots()
    n_c = d["n_control"]
    top = max([d["n_suspect"] * 4, 20] + [4 * r["n_needed"] for r in d["rows"] if r["n_needed"]])
    ns = np.unique(np.geomspace(1, min(top, 100000), 200).astype(int))
    for r, colour in zip(d["rows"], ("#d95f02", "#7570b3", "#1b9e77", "#e7298a", "#66a61e")):
        pw = [noether_power(r["auc"], n, n_c, d["alpha"], d["alternative"]) for n in ns]
        ax.plot(ns, pw, c=colour, label=f"{r['effect']} (AUC {r['auc']:.3f})")
    m = d.get("measured") or {}
    if m.get("rate") is not None:
        ax.errorbar([m["n"]], [m["rate"]], yerr=[[m["rate"] - m["lo"]], [m["hi"] - m["rate"]]], fmt="o", c="#7570b3",
                    ms=4, label="subsampled power (known members)")
    ax.axhline(d["target"], c="grey", ls=":", lw=1, label=f"target {d['target'] * 100:.0f}%")
    if d["n_suspect"]:
        ax.axvline(d["n_suspect"], c="k", ls="--", lw=0.8, label=f"this audit: {d['n_suspect']} suspects")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"number of suspect works (with {n_c} controls)")
    ax.set_ylabel("power")
    ax.set_title(f"Power at α = {d['alpha']:g} (Noether's approximation)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


_GATE_FIGURES = {"blind_baseline": blind_baseline_png, "placebo": placebo_png,
                 "positive_control": positive_control_png, "power": power_png}


def gate_png(g: GateResult) -> bytes | None:
    """The gate's figure, or None when the gate did not run."""
    if g.status == "not_run" or g.name not in _GATE_FIGURES:
        return None
    return _GATE_FIGURES[g.name](g)
