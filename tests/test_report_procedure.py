"""The procedure record of real runs (issue 21): what the report says about the order of plan and scores follows the
run's own records — a run that reuses every score from an earlier run's store does not claim its plan came first; a
run after audit-plan that computes its scores does."""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from audit.cli import commit_plan
from audit.pipeline import run_audit
from tests.conftest import compose_audit, small_audit


_compose = compose_audit


@pytest.fixture(scope="module")
def setup(memorized_ddpm, tmp_path_factory):
    root = tmp_path_factory.mktemp("procedure")
    base, _ = small_audit(memorized_ddpm, root)
    return root, base


def _report(folder: Path) -> str:
    """The report's HTML with the inline identifier tags (<time>, <code>) removed."""
    raw = (folder / "report.html").read_text(encoding="utf-8")
    return html.unescape(re.sub(r"</?(time|code)>", "", raw))


def _label(text: str) -> str:
    return re.search(r'<div class="label">Verdict \(([^)]*)', text).group(1)


@pytest.mark.slow
def test_a_rerun_that_reuses_every_score_from_the_store_does_not_claim_that_its_plan_came_first(setup):
    root, base = setup
    store = root / "store"
    run_audit(_compose(base + [f"score_store={store}"]), root / "first")
    run_audit(_compose(base + [f"score_store={store}"]), root / "second")
    first, second = (json.loads((root / f / "run.json").read_text()) for f in ("first", "second"))
    assert first["score_store"]["reused"] == 0 and first["score_store"]["computed"] > 0
    assert second["score_store"]["computed"] == 0 and second["score_store"]["reused"] == first["score_store"]["computed"]
    t1, t2 = _report(root / "first"), _report(root / "second")
    assert f"Every one of the {first['score_store']['computed']:,} scores was computed by this run" in t1
    assert "Procedure:" not in t1.split("In plain language", 1)[0]
    # the rerun: every score existed before its plan was declared; nothing in it says the plan came first
    assert "Every one of the" not in t2 and "nothing in the records shows that the plan came first" in t2
    assert _label(t2).startswith("exploratory")
    assert "before any score used in it was computed" not in t2 and "before any of its scores was computed" not in t2
    assert "records do not show that the analysis plan preceded the scores" in t2.split('id="declaration"', 1)[1]
    proc = json.loads((root / "second" / "report_records.json").read_text())["procedure"]
    assert proc["status"] == "scores_predate_plan" and proc["source_runs"] == ["first"]
    assert "computed by the run first" in t2 and "before this plan was declared" in t2


@pytest.mark.slow
def test_a_run_after_audit_plan_that_computes_its_scores_says_that_its_plan_came_first(setup):
    root, base = setup
    fresh = base + ["score_store=null"]
    path = commit_plan(_compose(fresh), root / "plan")
    run_audit(_compose(fresh + [f"plan_commitment={path}"]), root / "committed")
    run = json.loads((root / "committed" / "run.json").read_text())
    text = _report(root / "committed")
    committed_utc = run["analysis_plan"]["committed"]["committed_utc"]
    assert f"The analysis plan was committed with audit-plan at {committed_utc}" in text
    assert f"Every one of the {run['score_store']['computed']:,} scores was computed by this run after that" in text
    assert "committed with audit-plan before any score used in it was computed" in text.split('id="declaration"', 1)[1]
    assert "nothing in the records shows that the plan came first" not in text
    records = json.loads((root / "committed" / "report_records.json").read_text())
    assert records["procedure"]["status"] == "computed_in_run" and records["procedure"]["committed"]
