"""Quickstart: serve SmolLM2-135M-Instruct on this CPU with RedKnot, send one chat request, then
two requests that mark the same documents in opposite orders.

Runs `python -m sglang.launch_server ... --attention-backend redknot --radix-cache-backend redknot`
with the head profile shipped for SmolLM2 (36 of 90 KV heads global, local heads: window 2048, sink 4),
prints the answer; the second marked request gets the documents the first one computed placed
instead of computed (``redknot_recovery: false``), which the printed counts show. Stops the server;
pass --keep to leave it running.
"""

from __future__ import annotations

import argparse
import time

import requests

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
        documents(server)
        if args.keep:
            print("server left running; stop it with: kill --", -server.proc.pid)
            server.proc = None
    finally:
        server.stop()


DOCS = ["Document: the harbour of Quen has a red lighthouse built in 1872 by the engineer Mara Voss.\n",
        "Document: the market of Tavel opens at dawn and sells salt, cloth and dried fish.\n"]


def documents(server: Server) -> None:
    """The same two documents in both orders, marked as text pieces: the second request reuses them."""
    for order in (DOCS, DOCS[::-1]):
        text = ("Answer from the documents.\n" + "".join(order)
                + "Question: who built the lighthouse of Quen?\nAnswer: the lighthouse was built by")
        out = server.generate({"text": text, "sampling_params": {
            "temperature": 0, "max_new_tokens": 12,
            "custom_params": {"redknot_documents": [{"text": d} for d in order], "redknot_recovery": False}}})
        state = requests.get(server.url + "/get_server_info", timeout=60).json()["internal_states"][0]
        docs = state["redknot"]["documents"]
        print(f"marked request: {out['meta_info']['cached_tokens']} of {out['meta_info']['prompt_tokens']} prompt "
              f"tokens reused (placed so far: {docs['placed_tokens']}, documents cached: {docs['documents']}):",
              repr(out["text"]))


if __name__ == "__main__":
    main()
