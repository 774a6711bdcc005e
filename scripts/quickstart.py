"""Quickstart: serve SmolLM2-135M-Instruct on this CPU with RedKnot and send one chat request.

Runs `python -m sglang.launch_server ... --attention-backend redknot --radix-cache-backend redknot`
with the head profile shipped for SmolLM2 (10 of 90 KV heads global, local heads: window 256, sink 4),
prints the answer, and stops the server. Pass --keep to leave the server running.
"""

from __future__ import annotations

import argparse
import time

from redknot_sglang.testing.models import smollm2_dir
from redknot_sglang.testing.server import CPU_ARGS, REDKNOT_ARGS, Server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="smollm2-135m-instruct",
                    help="--redknot-head-profile value (default: the profile shipped for SmolLM2)")
    ap.add_argument("--keep", action="store_true", help="leave the server running")
    args = ap.parse_args()
    model = smollm2_dir()
    flags = [*CPU_ARGS, "--max-total-tokens", "8192", *REDKNOT_ARGS, "--redknot-head-profile", args.profile,
             "--redknot-window-pool-ratio", "0.5"]
    print("python -m sglang.launch_server --model-path", model, " ".join(flags))
    server = Server(model, flags).start()
    try:
        print(f"ready in {server.startup_s:.0f} s at {server.url} (log: {server.log_path})")
        t0 = time.monotonic()
        reply = server.chat({"messages": [{"role": "user", "content": "What is the capital of France?"}],
                             "temperature": 0, "max_tokens": 32})
        print(f"answer ({time.monotonic() - t0:.1f} s):", reply["choices"][0]["message"]["content"])
        if args.keep:
            print("server left running; stop it with: kill --", -server.proc.pid)
            server.proc = None
    finally:
        server.stop()


if __name__ == "__main__":
    main()
