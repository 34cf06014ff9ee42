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
            f"target.api_key_env={ENV}", "target.rate_limit=null", "target.steps.img2img=30",
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
    html = memorised_run["report"].read_text()
    import hashlib

    assert "Queries to the service (black box)" in html and "86 (86 service; 80 img2img, 6 text2image)" in html
    assert hashlib.sha256((out / "blackbox" / LOG).read_bytes()).hexdigest() in html
    assert "1 request(s) needed a retry" in html and f"environment variable {ENV}" in html


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
                   "target.offline=true", "report=none"), out2)
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
    v = verify.verify(a, recompute=False)  # the seal alone catches it
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
    from audit.blackbox.verify import check_request_log

    problems = check_request_log(c)  # the part of audit-verify that reads the request log (exercised above)
    assert any("request hash does not match" in p for p in problems), problems


def test_untrained_service_is_not_detected(untrained_ddpm, tmp_path, monkeypatch):
    from audit.pipeline import run_audit

    monkeypatch.setenv(ENV, SECRET)
    manifest = _manifest(tmp_path, untrained_ddpm.member_paths, untrained_ddpm.held_out_paths)
    with serve_model(str(untrained_ddpm.model_dir), api_key=SECRET) as server:
        run_audit(_cfg(server.url, manifest, None, "report=none"), tmp_path / "run")
    analysis = json.loads((tmp_path / "run" / io.ANALYSIS).read_text())
    assert analysis["verdict"]["decision"] == "fail_to_reject", analysis["verdict"]


# ---------------------------------------------------------------------------------------------- faults, limits
class Echo:
    """A model-free stand-in service: img2img returns the image, text2image seeded noise (no denoiser time)."""

    resolution = 16

    def img2img(self, image, *, strength, seed, steps, prompt=None):
        return np.asarray(image)

    def text2image(self, *, seed, steps, prompt=None):
        return np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)


def _target(url: str, tmp: Path, **kw) -> HttpTarget:
    import yaml

    cfg = yaml.safe_load((Path(CONFIG_DIR) / "target" / "http.yaml").read_text())
    for k in ("_target_", "cache_dir", "device", "dtype"):
        cfg.pop(k)
    cfg.update(base_url=url, resolution=16, rate_limit=None, backoff_s=0.01, api_key_env=ENV, timeout_s=5)
    cfg.update(kw)
    t = HttpTarget(**cfg)
    t.request_log = RequestLog(tmp / "blackbox")
    return t


def _img2img(seed: int) -> Request:
    from audit.blackbox.images import png_bytes

    img = np.full((16, 16, 3), 90, dtype=np.uint8)
    return Request.make("img2img", png_bytes(img), strength=0.5, prompt="", seed=seed, steps=10)


def test_retries_with_backoff_honour_retry_after(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, SECRET)
    faults = [("status", 429, {"Retry-After": "0.3"}), ("status", 500), ("status", 503)]
    with GroundTruthServer(Echo(), api_key=SECRET, faults=faults) as server:
        t = _target(server.url, tmp_path)
        t.resolve_requests([_img2img(1)])
        arrivals = list(server.arrivals)
    (rec,) = read_jsonl(tmp_path / "blackbox" / LOG)
    assert [a["status"] for a in rec["attempts"]] == [429, 500, 503, 200] and rec["response"]["status"] == 200
    gaps = np.diff(arrivals)
    assert gaps[0] >= 0.29  # Retry-After: 0.3 s
    assert gaps[1] >= 0.01 * 2 * 0.9 and gaps[2] >= 0.01 * 4 * 0.9  # exponential backoff 0.01 * 2^attempt


def test_rate_limit_and_concurrency_limit(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, SECRET)
    with GroundTruthServer(Echo(), api_key=SECRET) as server:
        _target(server.url, tmp_path / "a", rate_limit=20.0, max_concurrency=4).resolve_requests(
            [_img2img(i) for i in range(12)])
        span = server.arrivals[-1] - server.arrivals[0]
    assert span >= 11 / 20 * 0.9  # 12 starts at <= 20 per second
    with GroundTruthServer(Echo(), api_key=SECRET, delay_s=0.15) as server:
        _target(server.url, tmp_path / "b", max_concurrency=2).resolve_requests([_img2img(i) for i in range(6)])
        assert server.max_in_flight == 2  # used, and never exceeded


def test_slow_server_times_out_and_is_retried(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, SECRET)
    with GroundTruthServer(Echo(), api_key=SECRET, faults=[("sleep", 1.0)]) as server:
        t = _target(server.url, tmp_path / "a", timeout_s=0.3)
        t.resolve_requests([_img2img(1)])
    (rec,) = read_jsonl(tmp_path / "a" / "blackbox" / LOG)
    assert [a["error"] for a in rec["attempts"]] == ["timeout", None]
    with GroundTruthServer(Echo(), api_key=SECRET, delay_s=0.6) as server:
        t = _target(server.url, tmp_path / "b", timeout_s=0.2, max_retries=1)
        with pytest.raises(E.ServiceTimeout, match="timed out after 0.2 s on each of 2 attempts"):
            t.resolve_requests([_img2img(1)])


@pytest.mark.parametrize("case,error,words", [
    ("wrong_key", E.AuthError, "authentication failed (HTTP 401)"),
    ("quota", E.QuotaError, "still HTTP 429 after 3 attempts"),
    ("payment", E.QuotaError, "quota exhausted (HTTP 402"),
    ("refused", E.RefusedError, "refused the request (HTTP 451"),
    ("garbage", E.BadResponseError, "not a readable image"),
    ("server", E.ServerError, "server error (HTTP 500) on each of 3 attempts"),
    ("unreachable", E.UnreachableError, "cannot connect"),
])
def test_one_line_error_per_failure_class(case, error, words, tmp_path, monkeypatch):
    from audit.cli import user_error_line

    monkeypatch.setenv(ENV, "wrong-key" if case == "wrong_key" else SECRET)
    faults = {"quota": [("status", 429)] * 3, "payment": [("status", 402)], "garbage": [("garbage",)],
              "server": [("status", 500)] * 3}.get(case, [])
    server = GroundTruthServer(Echo(), api_key=SECRET, faults=faults).start()
    url = server.url
    if case == "unreachable":
        server.stop()  # nothing listens there any more
    try:
        t = _target(url, tmp_path, max_retries=2)
        req = Request.make("text2image", None, prompt="a forbidden motif", seed=1, steps=5) if case == "refused" \
            else _img2img(1)
        with pytest.raises(error) as info:
            t.resolve_requests([req])
    finally:
        if case != "unreachable":
            server.stop()
    line = user_error_line(info.value)  # what audit-run prints (exit status 2)
    assert line == str(info.value) and "\n" not in line and words in line, line
    assert SECRET not in line and "wrong-key" not in line
    (rec,) = read_jsonl(tmp_path / "blackbox" / LOG)  # the failed request is logged too
    assert rec["error"]["kind"] == error.kind


def test_budget_dry_run_prints_before_sending(artworks, tmp_path, monkeypatch, capsys):
    from audit.pipeline import run_audit

    members, held_out = artworks
    manifest = _manifest(tmp_path, members, held_out)
    with GroundTruthServer(Echo(), api_key=SECRET) as server:
        monkeypatch.delenv(ENV, raising=False)
        out = run_audit(_cfg(server.url, manifest, None, "target.dry_run=true", "target.rate_limit=2", "target.assumed_latency_s=1",
                             "target.price_per_request=0.01"), tmp_path / "dry")
        printed = capsys.readouterr().out
        assert server.total == 0 and not (Path(out) / io.PLAN).exists()
        assert ("budget: 86 requests to " in printed and "(80 bb_variation, 6 bb_generate)" in printed
                and "0 already answered by the log/cache, 86 to send" in printed
                and "about 43 s at 2 requests/s" in printed and "cost 0.86 USD at 0.01 USD per request" in printed)
        assert "dry run: nothing was sent" in printed
        with pytest.raises(E.BudgetError, match="86 requests to send exceed target.max_requests=50; nothing was sent"):
            run_audit(_cfg(server.url, manifest, None, "target.max_requests=50"), tmp_path / "over")
        with pytest.raises(E.AuthError, match=f"environment variable {ENV} .* is not set; nothing was sent"):
            run_audit(_cfg(server.url, manifest, None), tmp_path / "nokey")
        assert server.total == 0


def test_other_attacks_refuse_a_black_box_service_in_one_line(tmp_path):
    from audit.attacks import LossAttack, ReDiffuse
    from audit.attacks.base import AttackSetupError
    from audit.blackbox import BBGenerate, BBVariation

    t = _target("http://127.0.0.1:9", tmp_path)
    for attack in (LossAttack(), ReDiffuse()):
        with pytest.raises(AttackSetupError, match=r"needs the model itself \(\w+-box access\); the http target is a "
                                                   r"black-box service offering only img2img, text2image"):
            attack.check_target(t)
    BBVariation().check_target(t)  # black-box statistics run
    only_img2img = _target("http://127.0.0.1:9", tmp_path, operations={"img2img": {
        "path": "/v1/images/variations", "body": {"image": "{image_b64}"}, "response": {"type": "bytes"}}})
    with pytest.raises(AttackSetupError, match="bb_generate needs the service operation.s. text2image"):
        BBGenerate().check_target(only_img2img)


def test_configuration_refusals(tmp_path):
    with pytest.raises(E.ConfigError, match="must not hold a credential"):
        _target("https://user:pw@api.example.com", tmp_path)
    for pasted in (SECRET, "abc123def456ghi789"):  # a key pasted instead of a variable name is not echoed
        with pytest.raises(E.ConfigError, match="NAME of an environment variable") as info:
            _target("https://api.example.com", tmp_path, api_key_env=pasted)
        assert pasted not in str(info.value)
    with pytest.raises(E.ConfigError, match="refusing to send a credential over plain http to api.example.com"):
        _target("http://api.example.com", tmp_path)
    with pytest.raises(E.ConfigError, match="must not have a query string"):
        _target("https://api.example.com/?key=abc", tmp_path)
    bad = _target("http://127.0.0.1:9", tmp_path, operations={"img2img": {
        "path": "/v", "body": {"image": "{image_b64}", "guidance": "{cfg_scale}"}, "response": {"type": "bytes"}}})
    with pytest.raises(E.ConfigError, match=r"uses \{cfg_scale\}, which this operation does not provide"):
        bad.resolve_requests([_img2img(1)])


def test_reference_calibration_is_logged_and_verified(memorised_run, untrained_ddpm, tmp_path, monkeypatch):
    """A local reference model run through the same operations: score = score(service) − score(reference), the
    reference's answers are logged too, and the check recomputes both from the log."""
    import torch

    from audit.attacks.base import Batch, NoiseSource
    from audit.blackbox import BBVariation
    from audit.blackbox.verify import check_request_log
    from tests.conftest import evidence_for

    monkeypatch.setenv(ENV, SECRET)
    server = memorised_run["server"]
    ev = evidence_for(untrained_ddpm.member_paths[:2], untrained_ddpm.held_out_paths[:2])
    attack = BBVariation(n=1, reference={"source": str(untrained_ddpm.model_dir), "local_files_only": True,
                                         "device": "cpu", "dtype": "float32"})
    t = _target(server.url, tmp_path, steps={"img2img": 50})
    assert t.begin_run(ev, {"bb_variation": attack}, seed=0, out=tmp_path)
    batch = Batch(x0=ev.batch(0, 4), cond=None, captions=[""] * 4, image_ids=[r.image_id for r in ev.records],
                  noise_source=NoiseSource(0, [r.image_id for r in ev.records]), pixels=ev.batch(0, 4))
    scores = attack.score(t, batch)
    ders = read_jsonl(tmp_path / "blackbox" / "derivations.jsonl")
    assert len(ders) == 4 and all(d["reference_requests"] for d in ders)
    for d, s in zip(ders, scores.tolist()):
        assert d["score"] == pytest.approx(d["target_score"] - d["reference_score"]) == pytest.approx(s)
    sources = [e["source"] for e in read_jsonl(tmp_path / "blackbox" / LOG)]
    assert sources.count("service") == 4 and sources.count("local_reference") == 4
    (tmp_path / io.RUN).write_text(json.dumps({"attacks": {"bb_variation": {"params": attack.params()}}}))
    pd.DataFrame({"image_id": batch.image_ids, "attack": "bb_variation", "score": scores.float().tolist()}
                 ).to_parquet(tmp_path / io.SCORES)
    assert check_request_log(tmp_path) == []
    ref = next(e for e in read_jsonl(tmp_path / "blackbox" / LOG) if e["source"] == "local_reference")
    (tmp_path / "blackbox" / "images" / f"{ref['response']['received_sha256']}.png").write_bytes(
        (tmp_path / "blackbox" / "images" / f"{ref['sent_sha256']}.png").read_bytes())
    problems = check_request_log(tmp_path)
    assert problems and "does not have its SHA-256" in problems[0]
    assert torch.isfinite(scores).all()


def test_response_cache_answers_a_rerun_without_requests(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, SECRET)
    reqs = [_img2img(i) for i in range(5)] + [Request.make("text2image", None, prompt="p", seed=3, steps=5)]
    with GroundTruthServer(Echo(), api_key=SECRET) as server:
        first = _target(server.url, tmp_path / "a", cache_dir=str(tmp_path / "cache")).resolve_requests(reqs)
        assert server.total == 6
        again = _target(server.url, tmp_path / "b", cache_dir=str(tmp_path / "cache")).resolve_requests(reqs)
        assert server.total == 6  # nothing sent the second time
        other = _target(server.url, tmp_path / "c", cache_dir=str(tmp_path / "cache"), steps={"img2img": 7})
        other.resolve_requests(reqs[:1])  # another service setting is another request: not answered from the cache
        assert server.total == 7
    assert first.keys() == again.keys() and all(np.array_equal(first[k], again[k]) for k in first)
    log_b = read_jsonl(tmp_path / "b" / "blackbox" / LOG)
    assert [e["source"] for e in log_b] == ["cache"] * 6 and all(e["first_answered_utc"] for e in log_b)


def test_multipart_upload_of_the_image(tmp_path, monkeypatch):
    """Services that take the image as a multipart file part: the PNG arrives intact, the log has its hash."""
    monkeypatch.setenv(ENV, SECRET)
    ops = {"img2img": {"path": "/v1/images/variations", "encoding": "multipart", "response": {"type": "bytes"},
                       "body": {"image": "{image_file}", "strength": "{strength}", "seed": "{seed}", "steps": "{steps}"}}}
    with GroundTruthServer(Echo(), api_key=SECRET) as server:
        t = _target(server.url, tmp_path, operations=ops)
        (got,) = t.resolve_requests([_img2img(4)]).values()
    (rec,) = read_jsonl(tmp_path / "blackbox" / LOG)
    assert rec["body"]["image"] == f"<file sha256:{rec['sent_sha256']}>"
    assert rec["response"]["received_sha256"] == rec["sent_sha256"]  # the echo returned the uploaded PNG's pixels
    assert (got == 90).all()


def test_the_default_attack_list_on_a_black_box_service_is_the_black_box_one(artworks, tmp_path, monkeypatch,
                                                                            capsys):
    """A new user's `audit-run experiment=own_model target=http ...` without choosing attacks: the model's own
    attacks (loss, PIA, PIAN) need its weights, so the default list becomes the black-box statistics."""
    from audit.pipeline import run_audit

    members, held_out = artworks
    manifest = _manifest(tmp_path, members, held_out)
    n_works = 8 + len(held_out)
    with GroundTruthServer(Echo(), api_key=SECRET) as server:
        monkeypatch.setenv(ENV, SECRET)
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="audit", overrides=[
                "experiment=own_model", "target=http", f"target.base_url={server.url}", "target.resolution=16",
                f"target.api_key_env={ENV}", "target.rate_limit=null", "target.dry_run=true",
                f"data.manifest={manifest}", "runtime.progress=false", "score_store=null"])
        run_audit(cfg, tmp_path / "dry")
        printed = capsys.readouterr().out
        assert server.total == 0
        # bb_variation: 4 variations per work; bb_img2img: 2 reconstructions per work (configs/attack/*.yaml)
        assert f"({4 * n_works} bb_variation, {2 * n_works} bb_img2img)" in printed, printed
