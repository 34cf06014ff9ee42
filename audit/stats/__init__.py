"""Statistics over ScoreTables: effect sizes, hypothesis tests, validity gates and the audit analysis.

Layout: :mod:`~audit.stats.plan` (the analysis plan), :mod:`~audit.stats.results` (result records with
``summary()``), :mod:`~audit.stats.settests` (one file per set-level test + the ``SET_TESTS`` registry),
:mod:`~audit.stats.gates` (one file per validity gate + ``GATE_REGISTRY``), :mod:`~audit.stats.perwork`
(conformal p-values, multiplicity, the "at least k" bound), :mod:`~audit.stats.verdict` (the verdict sentence),
:mod:`~audit.stats.adjust` (difficulty adjustment), :mod:`~audit.stats.analysis` (the analysis pipeline);
:mod:`~audit.stats.core` the few quantities everything shares.

Pure functions (seeded randomness only), except :func:`audit.stats.blind.blind_features`, which computes
model-free image features from an evidence set at scoring time.
"""
from audit.stats.analysis import (
    TEST_LABELS,
    AnalysisPlan,
    ArtworkResult,
    AttackResult,
    AuditResult,
    Verdict,
    analyze,
    collapse_scores,
    format_p,
    test_label,
)
from audit.stats.gates import GATES, GateResult
from audit.stats.metrics import AucCI, RocPoints, TprAtFpr, auc_with_ci, roc_points, tpr_at_fpr
from audit.stats.perwork import (
    benjamini_hochberg,
    clopper_pearson,
    conformal_pvalues,
    holm,
    min_controls_for,
    storey_estimate,
    storey_pi0,
)
from audit.stats.results import CrossfitResult, StoreyEstimate, TestResult
from audit.stats.settests import (
    SET_TESTS,
    crossfit_test,
    mann_whitney,
    noether_n,
    noether_power,
    permutation_test,
)

__all__ = [
    "TEST_LABELS",
    "AnalysisPlan",
    "ArtworkResult",
    "AttackResult",
    "AuditResult",
    "Verdict",
    "analyze",
    "collapse_scores",
    "format_p",
    "test_label",
    "GATES",
    "GateResult",
    "AucCI",
    "RocPoints",
    "TprAtFpr",
    "auc_with_ci",
    "roc_points",
    "tpr_at_fpr",
    "CrossfitResult",
    "StoreyEstimate",
    "TestResult",
    "benjamini_hochberg",
    "clopper_pearson",
    "conformal_pvalues",
    "crossfit_test",
    "holm",
    "mann_whitney",
    "min_controls_for",
    "noether_n",
    "noether_power",
    "permutation_test",
    "storey_estimate",
    "storey_pi0",
]
