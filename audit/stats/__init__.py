"""Statistics over ScoreTables: effect sizes, hypothesis tests and the audit analysis. Pure functions."""
from audit.stats.analysis import (
    AnalysisPlan,
    ArtworkResult,
    AttackResult,
    AuditResult,
    Verdict,
    analyze,
    collapse_scores,
    format_p,
)
from audit.stats.metrics import AucCI, RocPoints, TprAtFpr, auc_with_ci, roc_points, tpr_at_fpr
from audit.stats.tests import (
    TestResult,
    benjamini_hochberg,
    conformal_pvalues,
    holm,
    mann_whitney,
    min_controls_for,
    permutation_test,
)

__all__ = [
    "AnalysisPlan",
    "ArtworkResult",
    "AttackResult",
    "AuditResult",
    "Verdict",
    "analyze",
    "collapse_scores",
    "format_p",
    "AucCI",
    "RocPoints",
    "TprAtFpr",
    "auc_with_ci",
    "roc_points",
    "tpr_at_fpr",
    "TestResult",
    "benjamini_hochberg",
    "conformal_pvalues",
    "holm",
    "mann_whitney",
    "min_controls_for",
    "permutation_test",
]
