"""Coverage of the "at least k of n suspects were in the training data" bound, and agreement of per-work claims.

Conformal p-values of several suspects against the same controls are dependent (they share the controls); the
bound (closed testing with Simes local tests, :func:`audit.stats.tests.true_discovery_bound`) is valid under
positive regression dependence, which these p-values have (Bates et al. 2023). This script checks it by
simulation: ``n`` suspects of which ``k`` are members (score shifted by ``delta`` SD), ``n_c`` controls, the bound
at α; coverage = P(bound ≤ k) must be ≥ 1 − α. It also counts the works named individually by Holm and by the
closed-testing procedure itself (Hommel adjusted p-values) and checks that the named works never exceed the
bound (they are the same procedure), and that no non-member is named more often than α (family-wise).

    python scripts/bound_coverage.py          # -> results/gating/bound_coverage.md
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from audit.stats.core import clopper_pearson, conformal_pvalues
from audit.stats.tests import holm, hommel, true_discovery_bound

OUT = Path("results/gating")


def main() -> int:
    rng = np.random.default_rng(2026)
    alpha, reps = 0.05, 2000
    rows = []
    for n, n_c in ((16, 360), (30, 84), (8, 96)):
        for k in sorted({0, 1, n // 4, n // 2, n}):
            for delta in (1.0, 2.0, 4.0):
                over = named_null = inconsistent = 0
                bound_sum = holm_sum = closed_sum = 0
                for _ in range(reps):
                    c = rng.normal(size=n_c)
                    s = rng.normal(size=n)
                    s[:k] += delta
                    p = conformal_pvalues(s, c)
                    b = true_discovery_bound(p, alpha)
                    hc = hommel(p) <= alpha
                    hh = holm(p) <= alpha
                    over += b > k
                    named_null += bool(hc[k:].any())
                    inconsistent += int(hc.sum() > b or hh.sum() > hc.sum())
                    bound_sum += b
                    holm_sum += int(hh.sum())
                    closed_sum += int(hc.sum())
                lo, hi = clopper_pearson(over, reps)
                lo2, hi2 = clopper_pearson(named_null, reps)
                rows.append(dict(n=n, n_control=n_c, k=k, delta=delta, reps=reps, p_bound_exceeds_k=over / reps,
                                 ci=[lo, hi], p_nonmember_named=named_null / reps, ci_named=[lo2, hi2],
                                 mean_bound=bound_sum / reps, mean_named_closed=closed_sum / reps,
                                 mean_named_holm=holm_sum / reps, inconsistent=inconsistent))
                if k == 0:
                    break  # delta does not matter without members
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bound_coverage.json").write_text(json.dumps(rows, indent=1))
    md = ["# The \"at least k of n\" bound under shared-control dependence (issue 20, item 6)", "",
          f"Made by `python scripts/bound_coverage.py`: {reps} simulated audits per row; members' scores shifted by "
          f"delta SD; α = {alpha}. *bound > k*: the bound claims more members than there are (must be ≤ α). "
          "*non-member named*: closed testing (Hommel adjusted p ≤ α) names at least one non-member (family-wise "
          "error, must be ≤ α). *inconsistent*: draws where closed testing named more works than the bound or Holm "
          "named more than closed testing (must be 0).", "",
          "| n | controls | members k | delta | P(bound > k) [95% CI] | P(non-member named) [95% CI] | mean bound | "
          "mean named (closed testing) | mean named (Holm) | inconsistent |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['n']} | {r['n_control']} | {r['k']} | {r['delta']:g} | {r['p_bound_exceeds_k']:.4f} "
                  f"[{r['ci'][0]:.4f}, {r['ci'][1]:.4f}] | {r['p_nonmember_named']:.4f} [{r['ci_named'][0]:.4f}, "
                  f"{r['ci_named'][1]:.4f}] | {r['mean_bound']:.2f} | {r['mean_named_closed']:.2f} | "
                  f"{r['mean_named_holm']:.2f} | {r['inconsistent']} |")
    (OUT / "bound_coverage.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
