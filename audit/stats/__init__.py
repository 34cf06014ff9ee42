"""Statistics over ScoreTables: effect sizes, hypothesis tests, validity gates and the audit analysis.

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
from audit.stats.tests import (
    CrossfitResult,
    StoreyEstimate,
    TestResult,
    benjamini_hochberg,
    clopper_pearson,
    conformal_pvalues,
    crossfit_test,
    holm,
    mann_whitney,
    min_controls_for,
    noether_n,
    noether_power,
    permutation_test,
    storey_estimate,
    storey_pi0,
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
