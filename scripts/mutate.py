"""Hand mutations: break one line of the kernels, the pool, the spans, the placement or the profile
checks, run the tests that should notice, and report whether they do. Each mutation is applied to
the working tree and reverted before the next (the tree is left as it was, also on Ctrl-C).

    python scripts/mutate.py [NAME ...]     # all by default; prints a table, exits 1 if one survives

The list is the record of what the suite is known to catch; add a line when a bug slips through.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation("decode: no rescale across key tiles", "kernels/segpaged.py",
             "        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)\n        m_i = m_new\n    has",
             "        acc = acc + tl.dot(p.to(v.dtype), v).to(tl.float32)\n        m_i = m_new\n    has",
             ("tests/kernels/test_segpaged.py",)),
    Mutation("decode: window one key short", "kernels/segpaged.py",
             "win_lo = tl.maximum(S, seq - W)", "win_lo = tl.maximum(S, seq - W + 1)",
             ("tests/kernels/test_segpaged.py",)),
    Mutation("torch local attention: sink ignored", "redknot_sglang/attention/local_torch.py",
             "return (kp <= qp) & ((kp < s) | (kp >= qp - w + 1))", "return (kp <= qp) & (kp >= qp - w + 1)",
             ("tests/kernels/test_segpaged.py",)),
    Mutation("kv store: local heads into the full pool too", "kernels/kv_store.py",
             "    if h < num_global:", "    if h <= num_global:", ("tests/kernels/test_kv_store.py",)),
    Mutation("pool: local heads' window slots not translated", "redknot_sglang/integration/head_split_pool.py",
             "swa_loc = self.translate_loc_from_full_to_swa(loc)", "swa_loc = loc",
             ("tests/unit/test_head_split_pool.py",)),
    Mutation("sink targets: position sink - 1 goes to the trash row", "redknot_sglang/integration/head_split_pool.py",
             "in_sink = positions < sink", "in_sink = positions < sink - 1", ("tests/unit/test_head_split_backend.py",)),
    Mutation("spans: a one-token overlap accepted", "redknot_sglang/reuse/spans.py",
             "            if span[0] < cursor:", "            if span[0] < cursor - 1:", ("tests/unit/test_spans.py",)),
    Mutation("placement: relocation delta off by one", "redknot_sglang/reuse/placement.py",
             "        return self.span[0]\n", "        return self.span[0] + 1\n",
             ("tests/unit/test_placement.py", "tests/unit/test_document_reuse.py")),
    Mutation("fingerprint: RoPE scaling ignored", "redknot_sglang/heads/fingerprint.py",
             'rope_factor=None if rope.get("factor") is None else float(rope["factor"]),', "rope_factor=None,",
             ("tests/unit/test_profile.py",)),
    Mutation("permute: o_proj columns left in checkpoint order", "redknot_sglang/model/permute.py",
             "        o.copy_(o[:, q_rows.to(o.device)])\n", "", ("tests/unit/test_permute.py",)),
    Mutation("permute: applied again by a second backend", "redknot_sglang/model/permute.py",
             "    if applied is not None:", "    if applied is not None and applied is layout:",
             ("tests/unit/test_permute.py",)),
    Mutation("balance: ranks filled in rank order", "redknot_sglang/heads/balance.py",
             "by_need = sorted(range(tp_size), key=lambda r: (totals[r], r))", "by_need = list(range(tp_size))",
             ("tests/unit/test_balance.py",)),
    Mutation("document reuse: window slots kept for every placed token", "redknot_sglang/integration/document_reuse.py",
             "keep = min(n, self.window)", "keep = n", ("tests/unit/test_document_reuse.py",)),
    Mutation("document reuse: unplace keeps the store locked", "redknot_sglang/integration/document_reuse.py",
             "        for p in pl.pieces:\n            self.store.unlock(p.match)\n        req.prefix_indices",
             "        req.prefix_indices", ("tests/unit/test_document_reuse.py",)),
    Mutation("self-check: instance attributes never looked up", "redknot_sglang/integration/targets.py",
             "    return any(name in c.__dict__", "    return False and any(name in c.__dict__",
             ("tests/unit/test_integration_targets.py",)),
    Mutation("pool sizing: sink rows left out of the budget", "redknot_sglang/integration/pool_sizing.py",
             "        self.cell = self.full_bytes + self.ratio * self.window_bytes + row_term",
             "        self.cell = self.full_bytes + self.ratio * self.window_bytes",
             ("tests/unit/test_pool_sizing.py",)),
    Mutation("sink cache: tenants share a block", "redknot_sglang/mem/sink_cache.py",
             "return extra_key, tuple(token_ids[: self.sink])", "return None, tuple(token_ids[: self.sink])",
             ("tests/unit/test_sink_cache.py",)),
]


def run(m: Mutation) -> tuple[bool, float]:
    path = ROOT / m.path
    text = path.read_text()
    if text.count(m.old) != 1:
        raise SystemExit(f"{m.name}: the line to mutate is not found exactly once in {m.path}")
    t0 = time.monotonic()
    path.write_text(text.replace(m.old, m.new))
    try:
        tests = [t for t in m.tests if (ROOT / t).exists()]
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                              cwd=ROOT, capture_output=True, text=True)
        return proc.returncode != 0, time.monotonic() - t0
    finally:
        path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="substrings of mutation names (default: all)")
    args = ap.parse_args()
    chosen = [m for m in MUTATIONS if not args.names or any(n in m.name for n in args.names)]
    survived = 0
    print(f"{'mutation':<55} {'caught':>7} {'s':>6}")
    for m in chosen:
        caught, seconds = run(m)
        survived += not caught
        print(f"{m.name:<55} {'yes' if caught else 'NO':>7} {seconds:>6.0f}", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
