"""Black-box audits of a hosted generator (issue 15): target=http against a loopback ground-truth server.

The server wraps the tiny DDPMs of conftest.py (memorising vs untrained) and counts every request it receives;
fault-injection runs use a trivial echo model so they cost no denoiser time.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from audit import io, verify
from audit.blackbox import errors as E
from audit.blackbox.log import LOG, RequestLog, read_jsonl
from audit.blackbox.server import GroundTruthServer, serve_model
from audit.blackbox.service import Request
from audit.blackbox.target import HttpTarget
from audit.cli import CONFIG_DIR
from audit.data import write_manifest

SECRET = "sk-test-7f3a9c1e5b2d4068a1b2c3d4e5f60718"
ENV = "AUDIT_TEST_SERVICE_KEY"
FAST_STATS = ["stats.n_permutations=200", "stats.n_bootstrap=50", "stats.crossfit_permutations=49",
              "stats.n_placebo=100", "stats.n_power_resamples=50"]


def _manifest(tmp: Path, members: list[Path], held_out: list[Path]) -> Path:
    rows = [{"path": str(p), "role": "suspect", "caption": "a painting"} for p in members[:8]]
    rows += [{"path": str(p), "role": "control", "caption": "a painting"} for p in held_out]
    return write_manifest(rows, tmp / "manifest.csv")


def _cfg(url: str, manifest: Path, cache: Path | None, *extra: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="audit", overrides=[
            "experiment=own_model", "target=http", f"target.base_url={url}", "target.resolution=16",
            f"target.api_key_env={ENV}", "target.rate_limit=null", "target.steps.img2img=50",
            "target.steps.text2image=10", "target.backoff_s=0.01", "target.price_per_request=0.002",
            f"target.cache_dir={cache if cache else 'null'}", f"data.manifest={manifest}",
            "attack=[bb_variation,bb_generate]", "attack.bb_variation.n=2", "attack.bb_generate.n=6",
            "runtime.progress=false", "score_store=null", *FAST_STATS,
            *([] if "report=none" in extra else ["report.formats=[html]"]), *extra])


@pytest.fixture(scope="module")
def memorised_run(memorized_ddpm, tmp_path_factory, monkeypatch_module):
    """One audit through target=http of the memorising DDPM; the server's first answer is a 500 that echoes the
    Authorization header (so the credential reaches an error body, and must still not reach any file)."""
    from audit.pipeline import run_audit

    monkeypatch_module.setenv(ENV, SECRET)
    tmp = tmp_path_factory.mktemp("bb_mem")
    manifest = _manifest(tmp, memorized_ddpm.member_paths, memorized_ddpm.held_out_paths)
    server = serve_model(str(memorized_ddpm.model_dir), api_key=SECRET, faults=[("status", 500)]).start()
    try:
        t0 = time.time()
        report = run_audit(_cfg(server.url, manifest, tmp / "cache"), tmp / "run")
        seconds = time.time() - t0
        yield {"out": tmp / "run", "report": Path(report), "server": server, "sent": server.total,
               "manifest": manifest, "tmp": tmp, "seconds": seconds}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_memorising_service_is_detected_and_folder_verifies(memorised_run):
    out = memorised_run["out"]
    analysis = json.loads((out / io.ANALYSIS).read_text())
    assert analysis["verdict"]["decision"] == "reject_h0", analysis["verdict"]
    run = io.read_run(out)
    assert set(run.scores.df["attack"]) == {"bb_variation", "bb_generate"}
    entries = read_jsonl(out / "blackbox" / LOG)
    # 40 works x 2 variations + 6 shared generations (one caption), each logged once, answered by the service
    assert len(entries) == 40 * 2 + 6 and all(e["source"] == "service" for e in entries)
    assert memorised_run["sent"] == 40 * 2 + 6 + 1  # + the scripted 500, retried
    first = next(e for e in entries if len(e.get("attempts", [])) == 2)
    assert [a["status"] for a in first["attempts"]] == [500, 200]
    assert run.metadata["blackbox"]["http_requests_sent"] == 87
    v = verify.verify(out)
    assert v.ok, v.problems
    assert any("black-box scores recomputed" in n for n in v.notes)


def test_credential_never_written(memorised_run):
    out = memorised_run["out"]
    hits = [p for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert hits == []
    # the echoed header reached the log redacted: the redaction is exercised, not vacuous
    assert "<credential>" in (out / "blackbox" / LOG).read_text()
    assert ENV in (out / "blackbox" / "service.json").read_text()  # the variable's name is recorded, not its value


def test_rerun_replays_the_log_with_zero_requests(memorised_run):
    from audit.pipeline import run_audit

    server, tmp = memorised_run["server"], memorised_run["tmp"]
    before = server.total
    out2 = tmp / "replayed"
    run_audit(_cfg(server.url, memorised_run["manifest"], None, f"target.replay={memorised_run['out']}",
                   "target.offline=true"), out2)
    assert server.total == before  # counted at the server: nothing was sent
    a = io.read_run(memorised_run["out"]).scores.df.sort_values(["attack", "image_id"]).reset_index(drop=True)
    b = io.read_run(out2).scores.df.sort_values(["attack", "image_id"]).reset_index(drop=True)
    pd.testing.assert_series_equal(a["score"], b["score"])
    entries = read_jsonl(out2 / "blackbox" / LOG)
    assert len(entries) == 86 and {e["source"] for e in entries} == {"replay"}
    assert verify.verify(out2).ok


def test_tampered_log_entry_is_detected(memorised_run, tmp_path):
    src = memorised_run["out"]
    # (1) an edited log line, not resealed: the seal names the file
    a = tmp_path / "a"
    shutil.copytree(src, a)
    lines = (a / "blackbox" / LOG).read_text().splitlines()
    rec = json.loads(lines[3])
    rec["finished_utc"] = "2020-01-01T00:00:00.000+00:00"
    lines[3] = json.dumps(rec, sort_keys=True)
    (a / "blackbox" / LOG).write_text("\n".join(lines) + "\n")
    v = verify.verify(a)
    assert not v.ok and any("changed file: blackbox/request_log.jsonl" in p for p in v.problems)
    # (2) an answer swapped for another logged image and the folder resealed: the scores no longer follow
    b = tmp_path / "b"
    shutil.copytree(src, b)
    entries = read_jsonl(b / "blackbox" / LOG)
    var = [e for e in entries if e["operation"] == "img2img"]
    var[0]["response"]["received_sha256"] = var[-1]["response"]["received_sha256"]
    (b / "blackbox" / LOG).write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    verify.seal(b)
    v = verify.verify(b)
    assert not v.ok and any("do not follow from the request log" in p for p in v.problems), v.problems
    # (3) a request's parameters edited (e.g. its seed), resealed: the request hash no longer matches
    c = tmp_path / "c"
    shutil.copytree(src, c)
    entries = read_jsonl(c / "blackbox" / LOG)
    entries[5]["params"]["seed"] += 1
    (c / "blackbox" / LOG).write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    verify.seal(c)
    v = verify.verify(c)
    assert not v.ok and any("request hash does not match" in p for p in v.problems), v.problems


def test_untrained_service_is_not_detected(untrained_ddpm, tmp_path, monkeypatch):
    from audit.pipeline import run_audit

    monkeypatch.setenv(ENV, SECRET)
    manifest = _manifest(tmp_path, untrained_ddpm.member_paths, untrained_ddpm.held_out_paths)
    with serve_model(str(untrained_ddpm.model_dir), api_key=SECRET) as server:
        run_audit(_cfg(server.url, manifest, None, "report=none"), tmp_path / "run")
    analysis = json.loads((tmp_path / "run" / io.ANALYSIS).read_text())
    assert analysis["verdict"]["decision"] == "fail_to_reject", analysis["verdict"]
