"""Committed plans (issue 12): audit-plan fixes plan, manifest, images and model before scoring; audit-run with
plan_commitment refuses any difference, and the report says which kind of plan it used."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit import commitment as commit
from audit.cli import commit_plan
from audit.data import write_manifest
from audit.pipeline import run_audit
from tests.conftest import compose_audit, small_audit


_compose = compose_audit


@pytest.fixture(scope="module")
def setup(memorized_ddpm, tmp_path_factory):
    root = tmp_path_factory.mktemp("commit")
    base, rows = small_audit(memorized_ddpm, root)
    base = base + ["score_store=null"]
    path = commit_plan(_compose(base), root / "plan")
    return root, base, path, rows


def test_commitment_records_plan_evidence_and_model_and_detects_its_own_alteration(setup, tmp_path):
    root, base, path, rows = setup
    rec = commit.load_commitment(path)
    assert len(rec["images"]) == len(rows) and all(len(h) == 64 for h in rec["images"].values())
    assert len(rec["target_fingerprint"]) == 64 and len(rec["manifest_sha256"]) == 64
    assert rec["commitment_sha256"] == commit.commitment_sha256(rec) and rec["committed_utc"]
    bad = dict(rec, plan_sha256="0" * 64)
    (tmp_path / "c.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="altered"):
        commit.load_commitment(tmp_path / "c.json")


def test_a_committed_run_scores_and_says_so_in_the_report(setup):
    root, base, path, _ = setup
    out = root / "run_ok"
    report = run_audit(_compose(base + [f"plan_commitment={path}"]), out)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["committed"]["commitment_sha256"] == commit.load_commitment(path)["commitment_sha256"]
    text = Path(report).read_text(encoding="utf-8") if str(report).endswith(".html") else \
        (out / "report.html").read_text(encoding="utf-8")
    assert "Plan committed at" in text and plan["committed"]["commitment_sha256"] in text
    # an ordinary run says its plan was declared inside the run
    plain = root / "run_plain"
    run_audit(_compose(base), plain)
    assert "No prior commitment" in (plain / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("change", ["plan", "image", "manifest", "model"])
def test_any_difference_from_the_commitment_is_refused_before_scoring(setup, change, tmp_path, untrained_ddpm):
    root, base, path, rows = setup
    overrides = list(base)
    if change == "plan":
        overrides.append("stats.alpha=0.01")
    elif change == "image":
        img = Path(rows[0]["path"])
        saved = img.read_bytes()
        img.write_bytes(saved + b"\0")  # one byte appended: another file
    elif change == "manifest":
        m = tmp_path / "manifest.csv"
        write_manifest(rows[:-1], m)
        overrides = [o for o in overrides if not o.startswith("data.manifest=")] + [f"data.manifest={m}"]
    else:
        overrides = [o for o in overrides if not o.startswith("target.source=")] + \
            [f"target.source={untrained_ddpm.model_dir}"]
    out = tmp_path / "run"
    try:
        with pytest.raises(ValueError, match="differ|committed"):
            run_audit(_compose(overrides + [f"plan_commitment={path}"]), out)
    finally:
        if change == "image":
            img.write_bytes(saved)
    assert not (out / "scores.parquet").exists()
