#!/usr/bin/env python
"""Serve a local diffusers model as a ground-truth "hosted generator" on the loopback address (issue 15).

    python scripts/blackbox_server.py <model folder> [--port 8000] [--api-key-env AUDIT_SERVICE_KEY]
    # in another shell, audit it as a black box:
    audit-run experiment=own_model target=http target.base_url=http://127.0.0.1:8000 target.resolution=16 \
        target.api_key_env=AUDIT_SERVICE_KEY data.manifest=<model folder>/evidence.csv 'attack=[bb_variation]'

The model is loaded through the audit's own loader (``load_target``, offline); the endpoints are those of
``configs/target/http.yaml`` (``POST /v1/images/generations``, ``POST /v1/images/variations``, ``GET /stats``).
With ``--api-key-env`` requests must carry ``Authorization: Bearer <value of that variable>``. Listens on
127.0.0.1 only; Ctrl-C stops it and prints how many requests it answered.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a local diffusers folder (e.g. written by scripts/train_target.py)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api-key-env", default=None, help="environment variable holding the key requests must carry")
    ap.add_argument("--refuse-word", default="forbidden", help="prompts containing it are refused (HTTP 451)")
    args = ap.parse_args()
    from audit.blackbox.server import serve_model

    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not key:
        print(f"blackbox_server: error: the environment variable {args.api_key_env} is not set", file=sys.stderr)
        return 2
    server = serve_model(args.model, port=args.port, api_key=key, refuse_word=args.refuse_word).start()
    print(f"serving {args.model} at {server.url} (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    print(f"answered {server.total} requests: {server.counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
