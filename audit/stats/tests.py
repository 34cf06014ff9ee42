"""Former home of the hypothesis tests (a confusing name beside pytest's ``tests/``), kept so that existing imports
keep working: the set-level tests now live one file each in :mod:`audit.stats.settests`, the per-work analysis in
:mod:`audit.stats.perwork` and the result records in :mod:`audit.stats.results`. New code imports from those.
"""
from __future__ import annotations

from audit.stats.perwork import (  # noqa: F401
    _adjust,
    _check_pvals,
    benjamini_hochberg,
    clopper_pearson,
    conformal_pvalues,
    holm,
    hommel,
    hommel_h,
    min_controls_for,
    storey_estimate,
    storey_pi0,
    stratified_conformal_pvalues,
    true_discovery_bound,
)
from audit.stats.results import CrossfitResult, StoreyEstimate, TestResult  # noqa: F401
from audit.stats.settests import *  # noqa: F401,F403
from audit.stats.settests import __all__ as _settests_all
from audit.stats.settests._common import _as_scores, _check_alternative  # noqa: F401
from audit.stats.settests.crossfit import (  # noqa: F401
    _canonical_order,
    _crossfit_batch,
    _fast_auc,
    _fold_patterns,
    _logistic_batch,
    _standardise,
)
from audit.stats.settests.mann_whitney import _has_ties, _z  # noqa: F401
from audit.stats.settests.van_elteren import _stratum_perms, _van_elteren_row  # noqa: F401

__all__ = [*_settests_all, "TestResult", "CrossfitResult", "StoreyEstimate", "conformal_pvalues",
           "stratified_conformal_pvalues", "holm", "hommel", "hommel_h", "benjamini_hochberg", "min_controls_for",
           "storey_pi0", "storey_estimate", "true_discovery_bound", "clopper_pearson"]
