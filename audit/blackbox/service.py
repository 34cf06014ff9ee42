"""The operations a hosted generator offers, and two ways to perform them.

A :class:`Request` is one call of an operation (``text2image`` or ``img2img``) with plain parameters and, for
img2img, the PNG bytes of the image sent. Its *key* is the SHA-256 of the service's identity plus the canonical
request (parameters and the SHA-256 of the image; never a credential), so the same request made again is
recognised and answered from the log.

- :class:`HttpClient` sends requests to a service described by configured templates (JSON bodies; image bytes or
  base64 in JSON back), with a rate limit, timeouts, retries with exponential backoff (``Retry-After`` honoured),
  and a one-line error for each failure class.
- :class:`LocalService` performs the same operations on a local diffusion model (the ground-truth server and a
  local reference model use it): img2img = noise to ``strength`` of the schedule and ``round(steps · strength)``
  deterministic steps back; text2image = ``steps`` deterministic steps from seeded noise.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import numpy as np

from audit.blackbox import errors as E
from audit.blackbox.images import b64, decode_image, sha256

OPERATIONS = ("text2image", "img2img")
IMAGE_FILE = object()  # marks the multipart part that carries the image
RETRY_STATUS = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class Request:
    operation: str
    params: tuple[tuple[str, Any], ...]  # sorted (name, plain value) pairs
    image: bytes | None = None  # PNG bytes sent (img2img)

    @staticmethod
    def make(operation: str, image: bytes | None = None, **params: Any) -> "Request":
        if operation not in OPERATIONS:
            raise E.ConfigError(f"unknown service operation {operation!r}; known: {', '.join(OPERATIONS)}")
        return Request(operation, tuple(sorted(params.items())), image)

    @property
    def image_sha256(self) -> str | None:
        return sha256(self.image) if self.image is not None else None

    def canonical(self) -> dict[str, Any]:
        return {"operation": self.operation, "params": dict(self.params), "image_sha256": self.image_sha256}

    def key(self, service_id: str) -> str:
        blob = json.dumps({"service": service_id, **self.canonical()}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def request_seed(run_seed: int, *parts: Any) -> int:
    """A 31-bit seed (what services accept) from the run seed and what the request is about."""
    digest = hashlib.sha256("|".join(str(p) for p in (int(run_seed), *parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


# ------------------------------------------------------------------------------------------------ templates
_WHOLE = re.compile(r"^\{(\w+)\}$")


def render(template: Any, values: Mapping[str, Any]) -> Any:
    """Fill a request template: a string that is exactly ``"{name}"`` becomes the value itself (keeping its
    JSON type), other strings are formatted, dicts and lists recursively."""
    if isinstance(template, str):
        m = _WHOLE.match(template)
        try:
            if m:
                return values[m.group(1)]
            return template.format_map(dict(values))
        except KeyError as e:
            raise E.ConfigError(f"request template uses {{{e.args[0]}}}, which this operation does not provide "
                                f"(available: {', '.join(sorted(values))})") from None
    if isinstance(template, Mapping):
        return {str(k): render(v, values) for k, v in template.items()}
    if isinstance(template, (list, tuple)):
        return [render(v, values) for v in template]
    return template


def _dig(obj: Any, path: str) -> Any:
    for part in [p for p in str(path).split(".") if p]:
        if isinstance(obj, list):
            if not part.isdigit() or int(part) >= len(obj):
                raise KeyError(part)
            obj = obj[int(part)]
        elif isinstance(obj, dict):
            obj = obj[part]
        else:
            raise KeyError(part)
    return obj


@dataclass(frozen=True)
class Operation:
    """One configured operation: where to send it, the JSON body template and how to read the answer."""

    name: str
    path: str
    body: dict[str, Any]
    method: str = "POST"
    response: str = "bytes"  # "bytes" (the body is the image) | "json_base64" (base64 at `field`)
    field: str = ""
    encoding: str = "json"  # "json" body | "multipart" form (the image, `{image_file}`, uploaded as a PNG file part)

    @staticmethod
    def from_config(name: str, cfg: Mapping[str, Any]) -> "Operation":
        if name not in OPERATIONS:
            raise E.ConfigError(f"target.operations.{name}: unknown operation; known: {', '.join(OPERATIONS)}")
        cfg = dict(cfg or {})
        resp = dict(cfg.get("response") or {"type": "bytes"})
        kind = str(resp.get("type", "bytes"))
        if kind not in ("bytes", "json_base64"):
            raise E.ConfigError(f"target.operations.{name}.response.type must be bytes or json_base64, got {kind!r}")
        if kind == "json_base64" and not resp.get("field"):
            raise E.ConfigError(f"target.operations.{name}.response.field: where the base64 image is, e.g. data.0.b64_json")
        if not str(cfg.get("path", "")).startswith("/"):
            raise E.ConfigError(f"target.operations.{name}.path must start with '/', got {cfg.get('path')!r}")
        method = str(cfg.get("method", "POST")).upper()
        if method not in ("POST", "PUT"):
            raise E.ConfigError(f"target.operations.{name}.method must be POST or PUT, got {method!r}")
        encoding = str(cfg.get("encoding", "json"))
        if encoding not in ("json", "multipart"):
            raise E.ConfigError(f"target.operations.{name}.encoding must be json or multipart, got {encoding!r}")
        return Operation(name, str(cfg["path"]), dict(cfg.get("body") or {}), method, kind, str(resp.get("field", "")),
                         encoding)

    def to_dict(self) -> dict[str, Any]:
        d = {"path": self.path, "method": self.method, "body": self.body,
             "response": {"type": self.response, "field": self.field}}
        if self.encoding != "json":
            d["encoding"] = self.encoding
        return d

    def values(self, req: Request, extra: Mapping[str, Any], for_log: bool = False) -> dict[str, Any]:
        v = {**extra, **dict(req.params)}
        if req.image is not None:
            v["image_b64"] = f"<sha256:{req.image_sha256}>" if for_log else b64(req.image)
            v["image_file"] = f"<file sha256:{req.image_sha256}>" if for_log else IMAGE_FILE
        return v

    def parse(self, content: bytes, content_type: str, resolution: int) -> tuple[bytes, np.ndarray]:
        """Response body → (the image's bytes as received, decoded uint8 array)."""
        if self.response == "bytes":
            if content_type.startswith(("application/json", "text/")):
                raise E.BadResponseError(f"bad response: expected image bytes from {self.name}, got {content_type}")
            data = content
        else:
            try:
                obj = json.loads(content)
                text = _dig(obj, self.field)
                if isinstance(text, str) and text.startswith("data:"):
                    text = text.split(",", 1)[1]
                import base64 as _b

                data = _b.b64decode(text, validate=True)
            except (ValueError, KeyError, TypeError) as e:
                raise E.BadResponseError(f"bad response: no base64 image at '{self.field}' in the JSON answer of "
                                         f"{self.name} ({type(e).__name__})") from None
        return data, decode_image(data, resolution)


# ------------------------------------------------------------------------------------------------ HTTP client
class RateLimiter:
    """At most ``rate`` request starts per second, shared by all worker threads (None: no limit)."""

    def __init__(self, rate: float | None):
        self.interval = 1.0 / float(rate) if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> float:
        if not self.interval:
            return 0.0
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        wait = start - now
        if wait > 0:
            time.sleep(wait)
        return wait


@dataclass
class Attempt:
    status: int | None
    error: str | None
    started_utc: float
    duration_s: float
    waited_s: float  # rate limit + backoff before this attempt

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "error": self.error, "started_unix": round(self.started_utc, 6),
                "duration_s": round(self.duration_s, 6), "waited_s": round(self.waited_s, 6)}


@dataclass
class Response:
    status: int
    content_type: str
    body_bytes: int
    image_bytes: bytes
    image: np.ndarray
    attempts: list[Attempt] = field(default_factory=list)


class HttpClient:
    """Sends :class:`Request` s to a configured service (see the module docstring). Thread-safe."""

    def __init__(self, base_url: str, operations: Mapping[str, Operation], resolution: int, *,
                 secret: Callable[[], str | None] = lambda: None, auth_header: str = "Authorization",
                 auth_scheme: str | None = "Bearer", headers: Mapping[str, str] | None = None,
                 extra_values: Mapping[str, Any] | None = None, rate_limit: float | None = None,
                 timeout_s: float = 60.0, max_retries: int = 4, backoff_s: float = 1.0, backoff_max_s: float = 60.0,
                 refused_status: tuple[int, ...] = (400, 422, 451), credential_env: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.operations = dict(operations)
        self.resolution = int(resolution)
        self._secret = secret
        self.auth_header, self.auth_scheme = auth_header, auth_scheme
        self.headers = dict(headers or {})
        self.extra_values = dict(extra_values or {})
        self.limiter = RateLimiter(rate_limit)
        self.timeout_s, self.max_retries = float(timeout_s), int(max_retries)
        self.backoff_s, self.backoff_max_s = float(backoff_s), float(backoff_max_s)
        self.refused_status = tuple(int(s) for s in refused_status)
        self.credential_env = credential_env
        self._local = threading.local()
        self.sent = 0  # HTTP requests actually sent (attempts included)
        self._count_lock = threading.Lock()

    def _session(self):
        import requests

        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def url(self, op: Operation) -> str:
        return self.base_url + op.path

    def log_body(self, req: Request) -> Any:
        op = self.operations[req.operation]
        return render(op.body, op.values(req, self.extra_values, for_log=True))

    def _redact(self, text: str) -> str:
        key = self._secret()
        text = " ".join(str(text).split())[:300]
        return text.replace(key, "<credential>") if key else text

    def send(self, req: Request) -> Response:
        """Send one request (with retries); raise a one-line :class:`~audit.blackbox.errors.ServiceError`."""
        import requests

        if req.operation not in self.operations:
            raise E.ConfigError(f"the service has no '{req.operation}' operation configured (target.operations)")
        op = self.operations[req.operation]
        body = render(op.body, op.values(req, self.extra_values))
        if op.encoding == "multipart":  # form fields as text, the image as a PNG file part
            files = {k: ("image.png", req.image, "image/png") for k, v in body.items() if v is IMAGE_FILE}
            payload = {"data": {k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items()
                                if v is not IMAGE_FILE}, "files": files}
            headers = dict(self.headers)
        else:
            payload = {"json": body}
            headers = {**self.headers, "Content-Type": "application/json"}
        key = self._secret()
        if key:
            headers[self.auth_header] = f"{self.auth_scheme} {key}" if self.auth_scheme else key
        where = f"{op.method} {self.url(op)}"
        attempts: list[Attempt] = []
        backoff = 0.0
        last = ""
        for attempt in range(self.max_retries + 1):
            if backoff > 0:
                time.sleep(backoff)
            waited = backoff + self.limiter.acquire()
            t0, wall0 = time.monotonic(), time.time()
            with self._count_lock:
                self.sent += 1
            try:
                r = self._session().request(op.method, self.url(op), headers=headers, timeout=self.timeout_s, **payload)
            except requests.Timeout:
                attempts.append(Attempt(None, "timeout", wall0, time.monotonic() - t0, waited))
                last = f"timed out after {self.timeout_s:g} s"
                backoff = self._backoff(attempt, None)
                continue
            except requests.ConnectionError as e:
                attempts.append(Attempt(None, "connection", wall0, time.monotonic() - t0, waited))
                last = f"cannot connect ({type(e).__name__})"
                backoff = self._backoff(attempt, None)
                continue
            dur = time.monotonic() - t0
            status = int(r.status_code)
            attempts.append(Attempt(status, None if status < 400 else self._redact(r.text[:200]), wall0, dur, waited))
            if status in RETRY_STATUS:
                last = f"HTTP {status}"
                backoff = self._backoff(attempt, r.headers.get("Retry-After"))
                continue
            n = len(attempts)
            if status in (401, 403):
                env = f" in ${self.credential_env}" if self.credential_env else " (target.api_key_env)"
                raise E.AuthError(f"http target: authentication failed (HTTP {status}) at {where}: check the credential{env}")
            if status == 402:
                raise E.QuotaError(f"http target: quota exhausted (HTTP 402 payment required) at {where}")
            if status in self.refused_status:
                raise E.RefusedError(f"http target: the service refused the request (HTTP {status}, content policy or "
                                     f"invalid input) at {where}: {self._redact(r.text[:160])}")
            if status >= 400 or status < 200:
                raise E.ServiceError(f"http target: unexpected HTTP {status} at {where} after {n} attempt(s)")
            ctype = r.headers.get("Content-Type", "").split(";")[0].strip().lower()
            try:
                data, arr = op.parse(r.content, ctype, self.resolution)
            except E.BadResponseError as e:
                raise E.BadResponseError(f"http target: {e} ({where})") from None
            return Response(status, ctype, len(r.content), data, arr, attempts)
        n = len(attempts)
        if last.startswith("HTTP 429"):
            raise E.QuotaError(f"http target: rate limit or quota: still HTTP 429 after {n} attempts at {where} "
                               "(lower target.rate_limit or wait)")
        if last.startswith("timed out"):
            raise E.ServiceTimeout(f"http target: {last} on each of {n} attempts at {where} (target.timeout_s)")
        if last.startswith("cannot connect"):
            raise E.UnreachableError(f"http target: {last} on each of {n} attempts at {where}")
        raise E.ServerError(f"http target: server error ({last}) on each of {n} attempts at {where}")

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(self.backoff_max_s, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return min(self.backoff_max_s, self.backoff_s * (2 ** attempt))


def check_base_url(url: str) -> str:
    parts = urlsplit(str(url))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise E.ConfigError(f"target.base_url must be an http(s) URL, got {url!r}")
    if parts.username or parts.password:
        raise E.ConfigError("target.base_url must not hold a credential (user:password@); "
                            "name an environment variable in target.api_key_env instead")
    if parts.query:
        raise E.ConfigError("target.base_url must not have a query string (a key there would be logged); "
                            "use target.api_key_env")
    return str(url).rstrip("/")


# ------------------------------------------------------------------------------------------------ local model
class LocalService:
    """text2image / img2img performed on a local :class:`~audit.targets.base.Target` (deterministic given the seed).

    Thread-safe (one lock around the model). Counts the denoiser evaluations it makes."""

    def __init__(self, target: Any):
        self.target = target
        self.resolution = int(target.info.resolution)
        self._lock = threading.Lock()

    def _cond(self, prompt: str | None):
        if not self.target.conditional:
            return None
        return self.target.encode_text([prompt or ""])

    def img2img(self, image: np.ndarray, *, strength: float, seed: int, steps: int, prompt: str | None = None
                ) -> np.ndarray:
        import torch

        from audit.diffusion.loops import img2img
        from audit.reconstruction.sampling import to_pixels, to_uint8

        tgt = self.target
        if not 0.0 < float(strength) <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        t = tgt.process.img2img_timestep(float(strength))
        k = max(1, min(t, round(int(steps) * float(strength))))
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float().div(127.5).sub(1)
        with self._lock, torch.inference_mode():
            x0 = tgt.encode(x.to(tgt.device))
            noise = torch.randn(tuple(x0.shape[1:]), generator=torch.Generator().manual_seed(int(seed)))[None]
            out = img2img(tgt, x0, noise.to(x0.device), t, k, self._cond(prompt))
            return to_uint8(to_pixels(tgt, out))[0].permute(1, 2, 0).numpy()

    def text2image(self, *, seed: int, steps: int, prompt: str | None = None) -> np.ndarray:
        import torch

        from audit.reconstruction.sampling import diffusion_shape, to_pixels, to_uint8

        tgt = self.target
        with self._lock, torch.inference_mode():
            shape = diffusion_shape(tgt)
            x = torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))[None].to(tgt.device)
            ts = tgt.process.sampling_timesteps(int(steps))
            cond = self._cond(prompt)
            for t, t_next in zip(ts, list(ts[1:]) + [-1]):
                eps = tgt.predict_noise(x, t, cond)
                x = tgt.ddim_step(x, eps, t, t_next)
            return to_uint8(to_pixels(tgt, x))[0].permute(1, 2, 0).numpy()
