"""End to end on CPU: a real SGLang server with the plugin, against a stock server on the same
model (SmolLM2-135M-Instruct). With the all-global profile the redknot backend and cache must give
the stock greedy tokens, token for token, on /generate and /v1/chat/completions."""

from __future__ import annotations

import pytest

from redknot_sglang.testing.server import CPU_ARGS, REDKNOT_ARGS, Server

pytestmark = pytest.mark.server

COMMON = (*CPU_ARGS, "--max-total-tokens", "8192", "--random-seed", "0")
LONG = " ".join(f"Fact {i}: the {['red', 'green', 'blue'][i % 3]} box holds {i * 7} coins." for i in range(60))
PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    LONG + " Question: which box holds 91 coins? Answer:",
    LONG + " Question: how many coins are in the box of fact 12? Answer:",  # shares LONG as prefix
]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colors."}],
]


def _run_all(server: Server) -> dict:
    greedy = {"temperature": 0, "max_new_tokens": 24}
    out = {"generate": [], "chat": [], "cached": []}
    for p in PROMPTS:
        r = server.generate({"text": p, "sampling_params": greedy})
        out["generate"].append(r["output_ids"])
        out["cached"].append(r["meta_info"]["cached_tokens"])
    batch = server.generate({"text": PROMPTS[:2], "sampling_params": greedy})
    out["batch"] = [r["output_ids"] for r in batch]
    for messages in CHATS:
        r = server.chat({"messages": messages, "temperature": 0, "max_tokens": 24})
        out["chat"].append(r["choices"][0]["message"]["content"])
    return out


@pytest.fixture(scope="module")
def stock_outputs(smollm2):
    with Server(smollm2, COMMON) as server:
        return _run_all(server)


def test_all_global_redknot_matches_stock_token_for_token(smollm2, stock_outputs):
    with Server(smollm2, (*COMMON, *REDKNOT_ARGS)) as server:
        ours = _run_all(server)
        log = server.log()
    assert "source=registered('redknot')" in log
    assert "base backend torch_native" in log
    assert ours["generate"] == stock_outputs["generate"]
    assert ours["batch"] == stock_outputs["batch"]
    assert ours["chat"] == stock_outputs["chat"]
    # the radix cache works as stock: the second LONG prompt reuses the first one's prefix
    assert ours["cached"] == stock_outputs["cached"] and ours["cached"][3] > 300
    assert "Paris" in ours["chat"][0]
