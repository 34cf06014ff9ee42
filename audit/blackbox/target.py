"""``target=http``: a hosted text-to-image / image-to-image service as the target of an audit (black box).

The target never sees weights or denoiser outputs: it performs the service's operations (``text2image``,
``img2img``) through :class:`~audit.blackbox.service.HttpClient` and records every request and answer in the
results folder (:mod:`audit.blackbox.log`). Only attacks that need nothing but these operations run
(:mod:`audit.blackbox.attacks`); every other attack refuses in one line (``Attack.check_support``).

Before anything is sent, :meth:`HttpTarget.begin_run` prints the budget (requests, the time at the configured
rate, the cost at the configured price) and stops there with ``target.dry_run=true``, or when the budget is over
``target.max_requests`` / ``target.max_cost``. Answers are cached by request key (``target.cache_dir``), so a
rerun replays them without querying the service again; ``target.replay`` answers from a previous results folder's
log and ``target.offline=true`` refuses to send anything at all.

The credential is read, when a request is sent, from the environment variable named by ``target.api_key_env``;
it is not stored on the target, not in the config, the log, the errors or any file of the results folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from audit.blackbox import errors as E
from audit.blackbox.images import decode_image
from audit.blackbox.log import BUDGET, SERVICE, ReplayLog, RequestLog, ResponseCache, utc
from audit.blackbox.service import HttpClient, LocalService, Operation, Request, check_base_url
from audit.targets.base import TargetInfo
from audit.targets.protocol import AuditTarget

log = logging.getLogger(__name__)

_NO_NETWORK = torch.nn.Module()
# conventional variable names only: a key pasted here by mistake is refused without being echoed
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")


def to_hwc_uint8(pixels: torch.Tensor) -> np.ndarray:
    """One ``[3, H, W]`` image in [-1, 1] (as batches hold them) → uint8 ``[H, W, 3]`` (exactly the evidence's pixels)."""
    return pixels.detach().float().cpu().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


class _Backend:
    """Resolves requests to images; :class:`HttpTarget` (service + log + cache) or :class:`LocalBackend`."""

    service_id: str = ""
    request_defaults: dict[str, dict[str, Any]] = {}
    #: where requests and answers are recorded as evidence (None: not recorded)
    request_log: RequestLog | None = None

    def resolve_requests(self, requests: Sequence[Request]) -> dict[str, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def record_derivation(self, record: dict[str, Any]) -> None:
        pass


class LocalBackend(_Backend):
    """The service operations performed on a local model (a gray-box target or a local reference model)."""

    def __init__(self, target: Any, steps: Mapping[str, int] | None = None, request_log: RequestLog | None = None,
                 label: str = "local"):
        self.service = LocalService(target)
        self.service_id = f"local:{target.fingerprint}"
        self.request_defaults = {"img2img": {"steps": 100}, "text2image": {"steps": 50}}
        for op, s in (steps or {}).items():
            self.request_defaults[op] = {"steps": int(s)}
        self.request_log = request_log
        self.label = label
        self.resolution = self.service.resolution

    def perform(self, req: Request) -> np.ndarray:
        p = dict(req.params)
        if req.operation == "img2img":
            return self.service.img2img(decode_image(req.image), strength=p["strength"], seed=p["seed"],
                                        steps=p["steps"], prompt=p.get("prompt"))
        return self.service.text2image(seed=p["seed"], steps=p["steps"], prompt=p.get("prompt"))

    def resolve_requests(self, requests: Sequence[Request]) -> dict[str, np.ndarray]:
        from audit.blackbox.images import png_bytes

        out: dict[str, np.ndarray] = {}
        for req in requests:
            key = req.key(self.service_id)
            if key in out:
                continue
            t0 = time.time()
            arr = self.perform(req)
            out[key] = arr
            if self.request_log is not None:  # a local reference model's answers are evidence too
                sent = self.request_log.image(req.image) if req.image is not None else None
                got = self.request_log.image(png_bytes(arr))
                self.request_log.append({"request_sha256": key, "service": self.service_id, "source": self.label,
                                 "operation": req.operation, "params": dict(req.params), "sent_sha256": sent,
                                 "started_utc": utc(t0), "finished_utc": utc(time.time()),
                                 "response": {"status": None, "received_sha256": got, "content_type": "image/png"}})
        return out


class HttpTarget(_Backend, AuditTarget):
    """A hosted generator reached over HTTP(S); see the module docstring and ``configs/target/http.yaml``.

    An :class:`~audit.targets.protocol.AuditTarget` with ``access = "black"``: the run hooks (budget, request log,
    summary) and ``operations``; no diffusion process, no decoder."""

    family = "http"
    access = "black"
    uses_score_store = False  # every answer comes from the request log / response cache, so each run logs all of it

    def __init__(self, base_url: str, *, resolution: int, operations: Mapping[str, Any], name: str | None = None,
                 model: str | None = None, api_key_env: str | None = None, auth_header: str = "Authorization",
                 auth_scheme: str | None = "Bearer", headers: Mapping[str, str] | None = None,
                 steps: Mapping[str, int] | None = None, rate_limit: float | None = None, max_concurrency: int = 4,
                 timeout_s: float = 60.0, max_retries: int = 4, backoff_s: float = 1.0, backoff_max_s: float = 60.0,
                 refused_status: Sequence[int] = (400, 422, 451), assumed_latency_s: float = 5.0,
                 price_per_request: float | None = None, currency: str = "USD", max_requests: int | None = None,
                 max_cost: float | None = None, cache_dir: str | None = None, replay: str | None = None,
                 offline: bool = False, dry_run: bool = False, device: str = "cpu", dtype: str = "float32",
                 **unknown: Any):
        if unknown:
            raise E.ConfigError(f"target (http): unknown key(s) {', '.join(sorted(unknown))}")
        self.base_url = check_base_url(base_url)
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8:
            raise E.ConfigError(f"target.resolution must be an integer ≥ 8 (the size images are sent at), got {resolution!r}")
        if api_key_env is not None and not _ENV_NAME.match(str(api_key_env)):
            raise E.ConfigError("target.api_key_env must be the NAME of an environment variable holding the "
                                "credential (capital letters, digits, _; at most 64), not the credential itself")
        from urllib.parse import urlsplit

        parts = urlsplit(self.base_url)
        if api_key_env and parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "::1", "localhost"):
            raise E.ConfigError(f"refusing to send a credential over plain http to {parts.hostname}; use https")
        ops = {str(k): Operation.from_config(str(k), v) for k, v in dict(operations or {}).items() if v}
        if not ops:
            raise E.ConfigError("target.operations: configure at least one of text2image, img2img")
        for key, val in (("max_concurrency", max_concurrency), ("max_retries", max_retries)):
            if isinstance(val, bool) or not isinstance(val, int) or val < (1 if key == "max_concurrency" else 0):
                raise E.ConfigError(f"target.{key} must be a {'positive' if key == 'max_concurrency' else 'non-negative'} "
                                    f"integer, got {val!r}")
        for key, val in (("timeout_s", timeout_s), ("rate_limit", rate_limit), ("assumed_latency_s", assumed_latency_s)):
            if val is not None and (not isinstance(val, (int, float)) or val <= 0):
                raise E.ConfigError(f"target.{key} must be a positive number, got {val!r}")
        self.name = name or self.base_url
        self.model = model
        self.resolution = int(resolution)
        self.api_key_env = api_key_env
        self.ops = ops
        self.request_defaults = {"img2img": {"steps": 100}, "text2image": {"steps": 50}}
        for op, s in dict(steps or {}).items():
            if s is None:
                self.request_defaults[op] = {}
            else:
                self.request_defaults[op] = {"steps": int(s)}
        self.rate_limit = float(rate_limit) if rate_limit else None
        self.max_concurrency = int(max_concurrency)
        self.assumed_latency_s = float(assumed_latency_s)
        self.price = float(price_per_request) if price_per_request is not None else None
        self.currency = currency
        self.max_requests = max_requests
        self.max_cost = max_cost
        self.offline, self.dry_run = bool(offline), bool(dry_run)
        self.cache = ResponseCache(Path(cache_dir) if cache_dir else None)
        self.replay = ReplayLog(Path(replay)) if replay else None
        self.settings = {"rate_limit_per_s": self.rate_limit, "max_concurrency": self.max_concurrency,
                         "timeout_s": float(timeout_s), "max_retries": int(max_retries), "backoff_s": float(backoff_s),
                         "backoff_max_s": float(backoff_max_s), "refused_status": [int(s) for s in refused_status],
                         "auth_header": auth_header if api_key_env else None, "credential_env": api_key_env,
                         "non_secret_headers": sorted(dict(headers or {}))}
        self.client = HttpClient(self.base_url, ops, self.resolution, secret=self._credential, auth_header=auth_header,
                                 auth_scheme=auth_scheme, headers=headers,
                                 extra_values={"size": self.resolution, "model": model or ""},
                                 rate_limit=self.rate_limit, timeout_s=timeout_s, max_retries=max_retries,
                                 backoff_s=backoff_s, backoff_max_s=backoff_max_s,
                                 refused_status=tuple(refused_status), credential_env=api_key_env)
        identity = {"base_url": self.base_url, "model": model, "resolution": self.resolution,
                    "operations": {k: v.to_dict() for k, v in sorted(ops.items())}, "steps": self.request_defaults}
        self.service_id = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        self.identity = identity
        self.info = TargetInfo(kind="service", source=self.base_url, resolution=self.resolution, conditional=False,
                               prediction_type="n/a (black box)", num_train_timesteps=0, fingerprint=self.service_id,
                               classes={"service": self.name}, family="http",
                               process={"access": "black box", "operations": sorted(ops)})
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.process = None
        self.unet_evals = 0
        self.request_log: RequestLog | None = None
        self._memo: dict[str, np.ndarray] = {}
        self._names: dict[int, str] = {}
        self._lock = threading.Lock()
        self.budget: dict[str, Any] | None = None

    # ------------------------------------------------------------------ the Target surface the pipeline uses
    @property
    def fingerprint(self) -> str:
        return self.service_id

    @property
    def conditional(self) -> bool:
        return False  # captions reach the service as prompts through the attacks, not as embeddings

    @property
    def operations(self) -> tuple[str, ...]:
        return tuple(sorted(self.ops))

    @property
    def denoiser(self) -> torch.nn.Module:
        """The service's network is not here: an empty module, so runtime speed settings apply to nothing."""
        return _NO_NETWORK

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def encode_text(self, captions: Sequence[str]) -> None:
        return None

    def _credential(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def attack_name(self, attack: Any) -> str:
        return self._names.get(id(attack), getattr(attack, "name", type(attack).__name__))

    # ------------------------------------------------------------------ budget, then the run
    def plan(self, evidence: Any, attacks: Mapping[str, Any], seed: int) -> dict[str, Any]:
        """Every request the attacks need for ``evidence`` (nothing sent): counts, time and cost estimates."""
        from audit.blackbox.images import png_bytes

        pngs = [png_bytes(to_hwc_uint8(evidence.batch(i, i + 1)[0])) for i in range(len(evidence))]
        ids = [r.image_id for r in evidence.records]
        caps = [r.caption for r in evidence.records]
        keys: dict[str, str] = {}
        per_attack: dict[str, int] = {}
        for name, attack in attacks.items():
            if not hasattr(attack, "plan_requests"):
                continue
            reqs = [q for group in attack.plan_requests(self, ids, pngs, caps, seed) for q in group]
            ks = {q.key(self.service_id) for q in reqs}
            per_attack[name] = len(ks)
            for k, q in zip([q.key(self.service_id) for q in reqs], reqs):
                keys.setdefault(k, q.operation)
        answered = sum(1 for k in keys if self._lookup(k) is not None)
        to_send = len(keys) - answered
        rate = min(self.rate_limit or float("inf"), self.max_concurrency / self.assumed_latency_s)
        seconds = to_send / rate if to_send else 0.0
        ops: dict[str, int] = {}
        for op in keys.values():
            ops[op] = ops.get(op, 0) + 1
        return {"service": self.name, "requests": len(keys), "already_answered": answered, "to_send": to_send,
                "per_attack": per_attack, "per_operation": ops, "works": len(ids),
                "requests_per_work": round(len(keys) / max(1, len(ids)), 3),
                "estimated_seconds": round(seconds, 1), "requests_per_second": round(rate, 3),
                "assumed_latency_s": self.assumed_latency_s, "price_per_request": self.price, "currency": self.currency,
                "estimated_cost": round(to_send * self.price, 4) if self.price is not None else None}

    @staticmethod
    def budget_line(b: dict[str, Any]) -> str:
        parts = ", ".join(f"{n} {a}" for a, n in b["per_attack"].items())
        secs = b["estimated_seconds"]
        when = f"{secs:.0f} s" if secs < 120 else (f"{secs / 60:.1f} min" if secs < 7200 else f"{secs / 3600:.1f} h")
        cost = (f"cost {b['estimated_cost']:.2f} {b['currency']} at {b['price_per_request']:g} {b['currency']} per request"
                if b["estimated_cost"] is not None else "cost unknown (set target.price_per_request)")
        return (f"budget: {b['requests']} requests to {b['service']} for {b['works']} works ({parts}); "
                f"{b['already_answered']} already answered by the log/cache, {b['to_send']} to send; "
                f"about {when} at {b['requests_per_second']:g} requests/s; {cost}")

    def begin_run(self, evidence: Any, attacks: Mapping[str, Any], *, seed: int, out: str | Path) -> bool:
        """Print and record the budget before anything is sent; open the request log in ``out/blackbox``.

        Returns False for a dry run (``target.dry_run``): nothing is sent and the caller stops."""
        self._names = {id(a): n for n, a in attacks.items()}
        for attack in attacks.values():  # an attack that cannot run here refuses before the budget is printed
            attack.check_target(self)
        b = self.plan(evidence, attacks, seed)
        self.budget = b
        print(self.budget_line(b), flush=True)
        if self.dry_run:
            print("dry run: nothing was sent (target.dry_run=true)", flush=True)
            return False
        if self.max_requests is not None and b["to_send"] > int(self.max_requests):
            raise E.BudgetError(f"budget: {b['to_send']} requests to send exceed target.max_requests={self.max_requests}; "
                                "nothing was sent")
        if self.max_cost is not None and b["estimated_cost"] is not None and b["estimated_cost"] > float(self.max_cost):
            raise E.BudgetError(f"budget: estimated cost {b['estimated_cost']:.2f} {self.currency} exceeds "
                                f"target.max_cost={self.max_cost}; nothing was sent")
        if b["to_send"] and self.offline:
            raise E.ReplayMiss(f"offline: {b['to_send']} of {b['requests']} requests are not in the response cache or "
                               "the replayed log, and target.offline=true forbids sending them")
        if b["to_send"] and self.api_key_env and not self._credential():
            raise E.AuthError(f"http target: the environment variable {self.api_key_env} (target.api_key_env) is not set; "
                              "nothing was sent")
        self.request_log = RequestLog(Path(out) / "blackbox")
        self.request_log.write_json(SERVICE, {**self.identity, "name": self.name, "fingerprint": self.service_id,
                                              "settings": self.settings})
        self.request_log.write_json(BUDGET, {**b, "line": self.budget_line(b)})
        return True

    def _lookup(self, key: str) -> tuple[dict[str, Any], bytes, str] | None:
        hit = self.cache.get(key)
        if hit is not None:
            return (*hit, "cache")
        if self.replay is not None:
            hit = self.replay.get(key)
            if hit is not None:
                return (*hit, "replay")
        return None

    def _request_record(self, key: str, req: Request) -> dict[str, Any]:
        op = self.ops[req.operation]
        sent = self.request_log.image(req.image) if req.image is not None else None
        return {"request_sha256": key, "service": self.service_id, "operation": req.operation, "method": op.method,
                "url": self.client.url(op), "params": dict(req.params), "body": self.client.log_body(req),
                "sent_sha256": sent}

    def _resolve_one(self, key: str, req: Request) -> np.ndarray:
        if self.request_log is None:
            raise RuntimeError("HttpTarget.begin_run must be called before requests are resolved")
        if req.operation not in self.ops:
            raise E.ConfigError(f"the service has no '{req.operation}' operation configured (target.operations)")
        rec = self._request_record(key, req)
        hit = self._lookup(key)
        if hit is not None:
            meta, data, source = hit
            got = self.request_log.image(data)
            self.request_log.append({**rec, "source": source, "started_utc": None, "finished_utc": None,
                                     "first_answered_utc": meta.get("first_answered_utc"),
                                     "replayed_from": meta.get("replayed_from"),
                                     "response": {"status": meta.get("status"), "content_type": meta.get("content_type"),
                                                  "body_bytes": meta.get("body_bytes"), "received_sha256": got}})
            return decode_image(data, self.resolution)
        if self.offline:
            raise E.ReplayMiss(f"offline: request {key[:16]}… ({req.operation}) is not in the response cache or the "
                               "replayed log")
        t0 = time.time()
        try:
            resp = self.client.send(req)
        except E.ServiceError as e:
            self.request_log.append({**rec, "source": "service", "started_utc": utc(t0), "finished_utc": utc(time.time()),
                                     "error": {"kind": e.kind, "message": str(e)}})
            raise
        got = self.request_log.image(resp.image_bytes)
        finished = utc(time.time())
        response = {"status": resp.status, "content_type": resp.content_type, "body_bytes": resp.body_bytes,
                    "received_sha256": got}
        self.request_log.append({**rec, "source": "service", "started_utc": utc(resp.attempts[0].started_utc),
                                 "finished_utc": finished, "attempts": [a.to_dict() for a in resp.attempts],
                                 "response": response})
        self.cache.put(key, {"first_answered_utc": finished, "received_sha256": got, "status": resp.status,
                             "content_type": resp.content_type, "body_bytes": resp.body_bytes}, resp.image_bytes)
        return resp.image

    def resolve_requests(self, requests: Sequence[Request]) -> dict[str, np.ndarray]:
        """Answers for ``requests`` by key: from this run's memo, the cache or replayed log, else the service
        (``max_concurrency`` at a time, rate-limited). The first failure stops the run with its one-line error."""
        todo: dict[str, Request] = {}
        out: dict[str, np.ndarray] = {}
        for req in requests:
            k = req.key(self.service_id)
            if k in self._memo:
                out[k] = self._memo[k]
            else:
                todo.setdefault(k, req)
        if todo:
            with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
                futures = {pool.submit(self._resolve_one, k, q): k for k, q in todo.items()}
                done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                for f in pending:
                    f.cancel()
                errs = [f.exception() for f in done if f.exception() is not None]
                if errs:
                    for f in pending:  # let requests already in flight finish and be logged
                        if not f.cancelled():
                            try:
                                f.result()
                            except Exception:
                                pass
                    raise errs[0]
                for f, k in futures.items():
                    out[k] = self._memo[k] = f.result()
        return out

    def record_derivation(self, record: dict[str, Any]) -> None:
        if self.request_log is not None:
            self.request_log.derivation(record)

    def run_summary(self) -> dict[str, Any]:
        """What run.json records about the service and its requests (no credential)."""
        counts = dict(self.request_log.counts) if self.request_log else {}
        return {"service": self.name, "base_url": self.base_url, "fingerprint": self.service_id,
                "operations": list(self.operations), "budget": self.budget, "log_entries": counts,
                "http_requests_sent": self.client.sent, "settings": self.settings}
