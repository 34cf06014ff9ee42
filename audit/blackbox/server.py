"""A ground-truth generator service on the loopback address: a local diffusion model behind an HTTP API.

Tests, the benchmark and the demo start it around a model whose training split is known, and audit it through
``target=http`` like any hosted service. Endpoints (JSON bodies):

- ``POST /v1/images/generations`` ``{prompt, seed, steps, size}`` → ``{"data": [{"b64_json": <PNG>}]}``
- ``POST /v1/images/variations``  ``{image: <base64 PNG>, strength, seed, steps, prompt}`` → PNG bytes (also as
  multipart/form-data with the image as a file part)
- ``GET /stats`` → requests received per path (for tests: "zero requests" is counted here)

Optional behaviour for tests: an API key (401 without it), a word that makes a prompt be refused (451, "content
policy"), and scripted faults consumed one per request (``("status", 429, {"Retry-After": "0.05"})``,
``("status", 500)``, ``("sleep", 1.5)``, ``("garbage",)``).
"""
from __future__ import annotations

import base64
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable

from audit.blackbox.images import decode_image, png_bytes

LOOPBACK = ("127.0.0.1", "::1", "localhost")


class GroundTruthServer:
    def __init__(self, service: Any, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                 refuse_word: str | None = "forbidden", faults: Iterable[tuple] = (), delay_s: float = 0.0):
        if host not in LOOPBACK:
            raise ValueError(f"the ground-truth server listens on the loopback address only, not {host!r}")
        self.service = service
        self.api_key = api_key
        self.refuse_word = refuse_word
        self.faults: deque = deque(faults)
        self.delay_s = float(delay_s)
        self.counts: dict[str, int] = {}
        self.arrivals: list[float] = []  # monotonic arrival time of every POST
        self.in_flight = 0
        self.max_in_flight = 0  # the most POSTs being handled at once
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                self._send(status, json.dumps(obj).encode(), "application/json", headers)

            def do_GET(self) -> None:
                if self.path == "/stats":
                    with outer._lock:
                        return self._json(200, {"counts": dict(outer.counts), "total": outer.total})
                self._json(404, {"error": "not found"})

            def do_POST(self) -> None:
                with outer._lock:
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    self._post()
                finally:
                    with outer._lock:
                        outer.in_flight -= 1

            def _post(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                with outer._lock:
                    outer.counts[self.path] = outer.counts.get(self.path, 0) + 1
                    outer.arrivals.append(time.monotonic())
                    fault = outer.faults.popleft() if outer.faults else None
                if outer.api_key is not None and self.headers.get("Authorization") != f"Bearer {outer.api_key}":
                    return self._json(401, {"error": "invalid api key"})
                if fault is not None:
                    if fault[0] == "status":
                        return self._json(int(fault[1]), {"error": f"scripted {fault[1]}",
                                                          "echo": self.headers.get("Authorization", "")},
                                          fault[2] if len(fault) > 2 else None)
                    if fault[0] == "sleep":
                        time.sleep(float(fault[1]))
                    if fault[0] == "garbage":
                        return self._send(200, b"this is not an image", "image/png")
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                try:
                    ctype = self.headers.get("Content-Type", "")
                    req = _multipart(raw, ctype) if ctype.startswith("multipart/form-data") else json.loads(raw or b"{}")
                except ValueError:
                    return self._json(400, {"error": "body is not JSON or multipart form data"})
                prompt = str(req.get("prompt") or "")
                if outer.refuse_word and outer.refuse_word in prompt.lower():
                    return self._json(451, {"error": {"message": "the prompt violates the content policy"}})
                try:
                    if self.path == "/v1/images/generations":
                        arr = outer.service.text2image(seed=int(req["seed"]), steps=int(req.get("steps", 50)),
                                                       prompt=prompt or None)
                        data = base64.b64encode(png_bytes(arr)).decode()
                        return self._json(200, {"data": [{"b64_json": data}]})
                    if self.path == "/v1/images/variations":
                        img = decode_image(base64.b64decode(req["image"]), outer.service.resolution)
                        arr = outer.service.img2img(img, strength=float(req["strength"]), seed=int(req["seed"]),
                                                    steps=int(req.get("steps", 100)), prompt=prompt or None)
                        return self._send(200, png_bytes(arr), "image/png")
                except (KeyError, ValueError, TypeError) as e:
                    return self._json(400, {"error": f"bad request: {type(e).__name__}: {e}"})
                return self._json(404, {"error": "not found"})

        self._server = ThreadingHTTPServer((host, int(port)), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "GroundTruthServer":
        self._thread = threading.Thread(target=self._server.serve_forever, name="ground-truth-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "GroundTruthServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _multipart(raw: bytes, content_type: str) -> dict[str, Any]:
    """A multipart/form-data body as the JSON form of the request (the file part base64-encoded)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    if not msg.is_multipart():
        raise ValueError("not multipart")
    out: dict[str, Any] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        out[str(name)] = base64.b64encode(data).decode() if part.get_filename() else data.decode()
    return out


def serve_model(model_dir: str, **kwargs: Any) -> GroundTruthServer:
    """A server around a local diffusers folder loaded through the audit's own loader (not started)."""
    from audit.blackbox.service import LocalService
    from audit.targets import load_target

    target = load_target(str(model_dir), local_files_only=True, device="cpu", dtype="float32")
    return GroundTruthServer(LocalService(target), **kwargs)
