"""A report that survives the opposing expert (issue 21): the basis of the comparison, a procedure record derived
from the records, no contradiction on the plain-language page, warnings from the numbers."""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.report import plain_summary, render_html
from audit.report.case import load_case
from audit.report.numbers import unexplained_numbers
from audit.report.procedure import procedure_record
from audit.stats import AnalysisPlan, analyze
from audit.types import ScoreTable

PLAN = AnalysisPlan(n_permutations=199, n_bootstrap=50, n_placebo=50, gates=("placebo", "positive_control"))


def _table(shifts: dict[str, dict[str, float]], sizes: dict[str, int], seed: int = 0) -> ScoreTable:
    """Scores per attack and role: N(shift, 1); ids shared across attacks."""
    rng = np.random.default_rng(seed)
    rows = []
    for attack, by_role in shifts.items():
        for role, n in sizes.items():
            for i in range(n):
                rows.append(dict(image_id=f"{role}-{i:05d}".ljust(64, "0"), role=role, attack=attack,
                                 attack_params_hash="p0", target_fingerprint="fp0", seed=0,
                                 score=float(rng.normal(by_role.get(role, 0.0), 1.0))))
    return ScoreTable(pd.DataFrame(rows))


def _images(scores: ScoreTable, **cols) -> pd.DataFrame:
    ids = scores.df.drop_duplicates("image_id")[["image_id", "role"]].reset_index(drop=True)
    out = ids.assign(path=[f"/works/{r}/{i:03d}.png" for i, r in enumerate(ids["role"])], caption="a painting",
                     artist="A", created="2019-03-01", width=256, height=256, format="PNG")
    for k, v in cols.items():
        out[k] = v(out) if callable(v) else v
    return out


def _scan(out_html: Path, result, metadata) -> list:
    records = json.loads((out_html.parent / "report_records.json").read_text())
    return unexplained_numbers(out_html.read_text(encoding="utf-8"), result.to_dict(), metadata, records)


# ------------------------------------------------------------------------------------------- procedure record
DECLARED = "2026-12-02T10:00:00+00:00"


def _meta(**kw):
    plan_rec = {"sha256": "x" * 64, "declared_utc": DECLARED}
    if kw.pop("committed", False):
        plan_rec["committed"] = {"committed_utc": "2026-12-01T09:00:00+00:00", "commitment_sha256": "c" * 64}
    return {"analysis_plan": plan_rec, **kw}


def test_procedure_status_follows_the_times_in_the_records():
    computed = procedure_record(_meta(score_store={"reused": 0, "computed": 120}))
    assert computed["status"] == "computed_in_run" and computed["order_ok"]
    # reused, counts only (the older run.json): when they were computed is unknown, so the order is not shown
    counts = procedure_record(_meta(score_store={"reused": 120, "computed": 0}))
    assert counts["status"] == "reused_time_unknown" and not counts["order_ok"]
    prov = {"loss": {"computed": 0, "reused": 120, "reused_earliest_computed_at": "2026-11-30T08:00:00+00:00",
                     "reused_latest_computed_at": "2026-11-30T08:05:00+00:00", "source_runs": ["11-30_demo"]}}
    early = procedure_record(_meta(score_store={"reused": 120, "computed": 0}, score_provenance=prov))
    assert early["status"] == "scores_predate_plan" and early["source_runs"] == ["11-30_demo"]
    # the same reused scores, computed after a commitment made with audit-plan: the plan came first
    after = dict(prov, loss=dict(prov["loss"], reused_earliest_computed_at="2026-12-01T09:30:00+00:00"))
    ok = procedure_record(_meta(committed=True, score_store={"reused": 120, "computed": 0}, score_provenance=after))
    assert ok["status"] == "reused_after_plan" and ok["order_ok"]
    assert procedure_record({})["status"] == "unknown"
    # the shape run.json records (audit.store.provenance_summary)
    real = {"run": "rerun", "attacks": {"loss": {"computed": 0, "reused": 120, "computed_at": {"earliest": None,
            "latest": None}, "reused_computed_at": {"earliest": "2026-11-30T08:00:00.5+00:00",
            "latest": "2026-11-30T08:05:00+00:00"}, "reused_from_runs": ["11-30_demo"],
            "reused_plan_sha256": ["y" * 64], "reused_under_other_plan": 120}}}
    rec = procedure_record(_meta(score_store={"reused": 120, "computed": 0}, score_provenance=real), "x" * 64)
    assert rec["status"] == "scores_predate_plan" and rec["source_runs"] == ["11-30_demo"]
    assert rec["reused_earliest"].startswith("2026-11-30T08:00:00") and rec["other_plans"] == ["y" * 64]
    # provenance as a list, and totals beside the per-attack entries, are read too
    listed = procedure_record(_meta(score_provenance={"attacks": [dict(prov["loss"], attack="loss")]}))
    assert listed["status"] == "scores_predate_plan" and listed["per_attack"][0]["attack"] == "loss"


@pytest.fixture(scope="module")
def audit_result():
    scores = _table({"loss": {"suspect": 1.5, "member": 2.0}}, {"suspect": 12, "control": 40, "member": 12,
                                                              "nonmember": 30})
    images = _images(scores)
    result = analyze(scores, images, PLAN, recorded_plan_sha256=PLAN.sha256())
    assert result.verdict.decision == "reject_h0" and result.verdict.confirmatory
    return result, scores, images


def test_a_run_whose_scores_were_all_reused_does_not_claim_that_its_plan_preceded_them(tmp_path, audit_result):
    result, scores, images = audit_result
    prov = {"loss": {"computed": 0, "reused": len(scores.df), "source_runs": ["12-01_090000_audit"],
                     "reused_earliest_computed_at": "2026-12-01T09:00:00+00:00",
                     "reused_latest_computed_at": "2026-12-01T09:01:00+00:00"}}
    for meta in (_meta(score_store={"reused": len(scores.df), "computed": 0}),  # run.json before score_provenance
                 _meta(score_store={"reused": len(scores.df), "computed": 0}, score_provenance=prov)):
        out = render_html(result, scores, images, [], meta, tmp_path / str(len(meta)) / "report.html")
        text = html.unescape(out.read_text(encoding="utf-8"))
        verdict_label = re.search(r'<div class="label">Verdict \(([^)]*)', text).group(1)
        assert verdict_label.startswith("exploratory") and "records do not show that the plan preceded" in verdict_label
        assert "Procedure:" in text and "nothing in the records shows that the plan came first" in text
        assert "fixed before any score was computed" not in text and "was fixed before the scores were computed" not in text
        declaration = text.split('id="declaration"', 1)[1]
        assert "records do not show that the analysis plan preceded the scores" in declaration
        assert "before any score used in it was computed" not in declaration
        assert _scan(out, result, meta) == []
    assert "12-01_090000_audit" in text and "before this plan was declared" in text


def test_a_committed_plan_whose_run_computed_every_score_says_that_the_plan_came_first(tmp_path, audit_result):
    result, scores, images = audit_result
    meta = _meta(committed=True, score_store={"reused": 0, "computed": len(scores.df)})
    out = render_html(result, scores, images, [], meta, tmp_path / "report.html")
    text = html.unescape(out.read_text(encoding="utf-8"))
    assert "Verdict (confirmatory)" in text and "Procedure:" not in text
    assert f"Every one of the {len(scores.df):,} scores was computed by this run after that" in text
    assert "committed with audit-plan before any score used in it was computed" in text
    # without the commitment the plan still preceded the scores, but only the run's own records say so
    meta2 = _meta(score_store={"reused": 0, "computed": len(scores.df)})
    t2 = html.unescape(render_html(result, scores, images, [], meta2, tmp_path / "b" / "report.html")
                       .read_text(encoding="utf-8"))
    assert "Verdict (confirmatory)" in t2 and "only from this run's own records" in t2


def test_a_tool_tree_with_uncommitted_changes_is_labelled_on_page_one(tmp_path, audit_result):
    result, scores, images = audit_result
    meta = _meta(score_store={"reused": 0, "computed": 1}, git_commit="abc123 (with uncommitted changes)",
                 regenerated_with="scripts/report.py x")  # regenerated: the label comes from the run's record only
    text = html.unescape(render_html(result, scores, images, [], meta, tmp_path / "report.html")
                         .read_text(encoding="utf-8"))
    assert text.index("uncommitted changes") < text.index("In plain language")


# ------------------------------------------------------------------------------------------- basis and case
def test_the_basis_table_flags_a_control_published_before_the_data_cutoff(tmp_path, audit_result):
    result, scores, images = audit_result
    images = images.copy()
    controls = images.index[images["role"] == "control"]
    images["published"] = ""
    images.loc[controls, "published"] = "2024-06"
    images.loc[controls[:2], "published"] = ["2022-11-30", "2023"]  # before the cutoff (2023: possibly)
    images["basis"] = np.where(images["role"] == "control", "post_cutoff", "")
    images.loc[controls[2], "basis"] = "unpublished"  # does not rest on the cutoff: not checked
    images.loc[controls[2], "published"] = "2020-01-01"
    images["source"] = np.where(images["role"] == "control", "artist's studio archive", "")
    cfg = "case:\n  model:\n    data_cutoff: '2023-06-30'\n  selection:\n    controls:\n      by: Counsel\n      by_date: true\n"
    meta = _meta(score_store={"reused": 0, "computed": 1}, config_yaml=cfg)
    out = render_html(result, scores, images, [], meta, tmp_path / "report.html")
    raw = out.read_text(encoding="utf-8")
    text = html.unescape(raw)
    flagged = raw.split('id="cutoff-flagged"', 1)[1].split("</table>", 1)[0]
    paths = images.loc[controls, "path"].map(lambda p: Path(p).name).tolist()
    assert paths[0] in flagged and paths[1] in flagged and paths[2] not in flagged and paths[3] not in flagged
    assert "2 may have been published before it" in text
    records = json.loads((tmp_path / "report_records.json").read_text())
    assert records["basis"]["n_flagged"] == 2 and records["basis"]["cutoff"] == "2023-06-30"
    assert "The case file states that the controls were chosen by date." in text
    assert (tmp_path / "case.yaml").is_file() and records["case"]["exhibit"]["sha256"] in text
    assert "artist's studio archive" in text and "post_cutoff" in text
    assert _scan(out, result, meta) == []


def test_a_case_file_is_merged_validated_and_kept_as_an_exhibit(tmp_path):
    f = tmp_path / "case.yaml"
    f.write_text("model:\n  name: PaintTool v2\n  data_cutoff: 2023-06-30\nselection:\n  blind_to_scores: true\n")
    cfg = {"case": {"file": str(f), "model": {"name": "from the group", "kept_how": "write-protected drive"}}}
    folder = tmp_path / "run"
    rec = load_case(cfg, folder)
    assert rec["model"]["name"] == "PaintTool v2" and rec["model"]["kept_how"] == "write-protected drive"
    assert rec["model"]["data_cutoff"] == "2023-06-30" and rec["selection"]["blind_to_scores"] is True
    assert (folder / "case.yaml").is_file() and rec["exhibit"]["name"] == "case.yaml"
    # a regenerated report reads the folder's exhibit only, never a path named in the folder's config
    f.write_text("model:\n  name: changed afterwards\n")
    again = load_case(cfg, folder, regenerated=True)
    assert again["model"]["name"] == "PaintTool v2"
    assert load_case(cfg, tmp_path / "elsewhere", regenerated=True)["stated"] is False
    for bad, msg in (({"model": {"colour": "x"}}, "unknown case key model.colour"),
                     ({"model": {"data_cutoff": "last spring"}}, "must be a date"),
                     ({"selection": {"blind_to_scores": "yes"}}, "true, false or null")):
        with pytest.raises(ValueError, match=msg):
            load_case({"case": bad}, None)


def test_every_shipped_case_config_is_a_valid_case_record():
    import yaml

    from audit.cli import CONFIG_DIR

    for p in sorted((Path(CONFIG_DIR) / "case").glob("*.yaml")):
        values = yaml.safe_load(p.read_text())
        values.pop("defaults", None)
        load_case({"case": values}, None)


def test_manifest_basis_columns_are_optional_and_validated(tmp_path):
    from audit.data import read_manifest

    m = tmp_path / "m.csv"
    m.write_text("path,role,basis,published,source\na.png,control,post_cutoff,2024-02,the artist\nb.png,suspect,,,\n")
    a, b = read_manifest(m)
    assert (a["basis"], a["published"], a["source"]) == ("post_cutoff", "2024-02", "the artist")
    assert (b["basis"], b["published"], b["source"]) == ("", "", "")
    m.write_text("path,role,published\na.png,control,Feb 2024\n")
    with pytest.raises(ValueError, match=r"m.csv:line 2.*published.*YYYY"):
        read_manifest(m)
    m.write_text("path,role,published\na.png,control,2024-02-30\n")
    with pytest.raises(ValueError, match="published"):
        read_manifest(m)


def test_the_date_trend_of_the_controls_is_measured_and_said(tmp_path):
    from audit.stats.blind import date_trend, decimal_years

    rng = np.random.default_rng(3)
    yc = rng.uniform(2015, 2023, 200)
    sc = -0.5 * (yc - 2019) + rng.normal(0, 0.3, 200)  # older works score higher, no training at all
    ys = rng.uniform(2012, 2016, 30)
    ss = -0.5 * (ys - 2019) + rng.normal(0, 0.3, 30)
    d = date_trend(ys, ss, yc, sc)
    assert d["p_value"] < 1e-6 and d["rho"] < 0
    assert d["predicted_gap"] == pytest.approx(d["observed_gap"], rel=0.2)  # the date explains the whole gap
    # within strata the same trend is found when each artist has its own level
    g_c = np.where(np.arange(200) % 2 == 0, "a", "b")
    d2 = date_trend(ys, ss + 1.0, yc, sc + np.where(g_c == "a", 1.0, -1.0), ["a"] * 30, g_c)
    assert d2["within_strata"] and d2["rho"] < 0
    assert decimal_years(["2020", "2020-01-01", "", "x"])[1] == 2020.0
    assert np.isnan(decimal_years([""])[0])


# ------------------------------------------------------------------------------------------- plain language
def _inject(result, **fields):
    """The analysis with closed-testing fields (issue 20) added to its record, as analysis.json will carry them."""
    d = result.to_dict()
    for a in d["attacks"]:
        if a["attack"] == result.primary_attack:
            a.update(fields.get("attack", {}))
            for w, p in zip(a["artworks"], fields.get("p_closed", [])):
                w["p_closed"] = p
    result.to_dict = lambda: d  # instance attribute shadows the method
    return result


def test_the_summary_never_puts_at_least_k_beside_none_named_for_the_same_procedure():
    scores = _table({"loss": {"suspect": 4.0}}, {"suspect": 10, "control": 60})
    res = analyze(scores, None, PLAN, recorded_plan_sha256=PLAN.sha256())
    a = res.attack("loss")
    assert a.members_lower_bound == a.n_bound == 10 and a.n_flagged_holm == 0  # the demo's situation
    # an analysis that does not record the closed-testing per-work claims (before issue 20): the bound alone
    old = _inject(analyze(scores, None, PLAN, recorded_plan_sha256=PLAN.sha256()),
                  attack={"n_flagged_closed": None}, p_closed=[None] * 10)
    text = " ".join(plain_summary(old))
    assert "at least 10 of the 10" in text
    assert not re.search(r"\b0 work\(?s?\)? can be named", text) and "Holm" not in text
    assert "statement about each of them" in text
    # with the closed-testing per-work claims recorded, the words follow them
    named = _inject(analyze(scores, None, PLAN, recorded_plan_sha256=PLAN.sha256()),
                    attack={"n_flagged_closed": 10}, p_closed=[0.01] * 10)
    assert "The same procedure names 10 of them individually" in " ".join(plain_summary(named))
    for r in (res, old, named):
        t = " ".join(plain_summary(r))
        k = re.search(r"at least (\d+) of the", t)
        assert not (k and int(k.group(1)) > 0 and re.search(r"\b(0|no) works? (can be|is|are) named", t))
    group = _inject(analyze(scores, None, PLAN, recorded_plan_sha256=PLAN.sha256()),
                    attack={"members_lower_bound": 3, "n_flagged_closed": 0}, p_closed=[0.2] * 10)
    group.attack("loss").members_lower_bound = 3
    t = " ".join(plain_summary(group))
    assert "at least 3 of the 10" in t and "cannot say which" in t and not re.search(r"\b0 works? can be named", t)
    # no "at least 0 of n" (the stale black-box wording), no point estimate with a degenerate interval
    null = analyze(_table({"loss": {}}, {"suspect": 8, "control": 60}), None, PLAN, recorded_plan_sha256=PLAN.sha256())
    t0 = " ".join(plain_summary(null))
    assert "at least 0" not in t0 and "Storey" not in t0 and "16.0–16.0" not in t0


def test_a_planned_feature_worse_than_chance_on_known_members_is_warned_about(tmp_path):
    scores = _table({"loss": {"suspect": 1.5, "member": 2.0}, "pia": {"suspect": 0.0, "member": -1.0}},
                    {"suspect": 12, "control": 40, "member": 20, "nonmember": 30})
    plan = AnalysisPlan(features=("loss", "pia"), crossfit_permutations=49, n_bootstrap=50, n_placebo=20,
                        gates=("placebo",))
    res = analyze(scores, None, plan, recorded_plan_sha256=plan.sha256())
    pia = res.attack("pia").auc_member_nonmember
    assert pia.auc < 0.5
    warnings = [p for p in plain_summary(res) if p.startswith("Warning")]
    assert len(warnings) == 1 and "'pia'" in warnings[0] and "worse than chance" in warnings[0]
    assert f"{pia.auc:.3f}" in warnings[0]
    # an attack outside the plan is not warned about on the plain-language page
    res2 = analyze(scores, None, AnalysisPlan(primary_attack="loss", n_permutations=99, n_bootstrap=50,
                                              n_placebo=20, gates=("placebo",)), recorded_plan_sha256=None)
    assert not [p for p in plain_summary(res2) if p.startswith("Warning")]
    out = render_html(res, scores, None, [], {}, tmp_path / "report.html")
    assert warnings[0] in html.unescape(out.read_text(encoding="utf-8"))


def test_decision_level_error_rates_are_said_when_recorded_and_their_absence_when_not(tmp_path, audit_result):
    result, scores, images = audit_result
    import copy

    absent = copy.copy(result)
    d0 = dict(result.to_dict(), decision_rates=None)
    absent.to_dict = lambda: d0
    text = " ".join(plain_summary(absent))
    assert "was not measured on this model" in text
    rates = {"fpr": {"k": 3, "n": 200, "rate": 0.015, "lo": 0.0031, "hi": 0.0432, "source": "placebo + negative control"},
             "power": None, "measured_on": "this model (known members and non-members)",
             "note": "Power needs at least twice as many known members as suspects."}
    d = result.to_dict()
    d["decision_rates"] = rates
    r2 = copy.copy(result)
    r2.to_dict = lambda: d
    t2 = " ".join(plain_summary(r2))
    assert "in 3 of 200 trials in which none was (1.5%" in t2 and "its power could not be measured" in t2
    assert rates["note"] in t2
    out = render_html(r2, scores, images, [], _meta(score_store={"computed": 1}), tmp_path / "report.html")
    raw = out.read_text(encoding="utf-8")
    assert "Error rates of the whole decision" in raw
    records = json.loads((tmp_path / "report_records.json").read_text())
    assert unexplained_numbers(raw, d, _meta(score_store={"computed": 1}), records) == []


def test_the_pdf_leaves_out_configuration_dumps_and_quotes_exhibits_by_sha256(tmp_path, audit_result):
    import hashlib

    result, scores, images = audit_result
    (tmp_path / "config.yaml").write_text("stats:\n  alpha: 0.05\n")
    (tmp_path / "run.json").write_text("{}")
    meta = _meta(score_store={"computed": 1}, config_yaml="stats:\n  alpha: 0.05\n")
    raw = render_html(result, scores, images, [], meta, tmp_path / "report.html").read_text(encoding="utf-8")
    exhibits = raw.split('id="exhibits"', 1)[1].split("</table>", 1)[0]
    for f in ("config.yaml", "run.json", "evidence_inventory.csv"):
        assert hashlib.sha256((tmp_path / f).read_bytes()).hexdigest() in exhibits
    # the configuration is repeated in the HTML only (a screen-only block, hidden in print)
    block = raw.split("<h3>Resolved configuration</h3>", 1)[0].rsplit('<div class="screen-only">', 1)
    assert len(block) == 2 and "</div>" not in block[1]
    seal = hashlib.sha256((tmp_path / "report_records.json").read_bytes()).hexdigest()
    assert seal in raw.split('id="seal"', 1)[1][:2000]
