"""Set-level tests (suspects vs controls), one file each, and their registry.

A new test is one file here that defines its functions and a ``SET_TEST`` entry (:class:`SetTest`), plus its
module in :data:`_MODULES`; the plan (``stats.test``), the analysis, the gates and the report's Methods sentence
all read it from :data:`SET_TESTS`.
"""
from __future__ import annotations

from audit.stats.settests import crossfit as _crossfit_mod
from audit.stats.settests import mann_whitney as _mann_whitney_mod
from audit.stats.settests import permutation as _permutation_mod
from audit.stats.settests import van_elteren as _van_elteren_mod
from audit.stats.settests._common import ALTERNATIVES, Alternative, strata_permutations
from audit.stats.settests.base import SetTest
from audit.stats.settests.crossfit import (
    crossfit_auc,
    crossfit_folds,
    crossfit_null,
    crossfit_pvalues_from_null,
    crossfit_test,
    within_strata_auc,
)
from audit.stats.settests.mann_whitney import (
    MWU_EXACT_MAX_PAIRS,
    MWU_PERMUTATIONS,
    mann_whitney,
    mann_whitney_batch,
    mwu_method,
    noether_controls_needed,
    noether_n,
    noether_power,
)
from audit.stats.settests.permutation import permutation_pvalues_batch, permutation_test
from audit.stats.settests.van_elteren import van_elteren_batch, van_elteren_test

_MODULES = (_mann_whitney_mod, _permutation_mod, _van_elteren_mod, _crossfit_mod)
#: name -> SetTest, in the order the per-attack tables list them
SET_TESTS: dict[str, SetTest] = {m.SET_TEST.name: m.SET_TEST for m in _MODULES}

__all__ = ["SET_TESTS", "SetTest", "ALTERNATIVES", "Alternative", "strata_permutations", "crossfit_auc",
           "crossfit_folds", "crossfit_null", "crossfit_pvalues_from_null", "crossfit_test", "within_strata_auc",
           "MWU_EXACT_MAX_PAIRS", "MWU_PERMUTATIONS", "mann_whitney", "mann_whitney_batch", "mwu_method",
           "noether_controls_needed", "noether_n", "noether_power", "permutation_pvalues_batch", "permutation_test",
           "van_elteren_batch", "van_elteren_test"]
