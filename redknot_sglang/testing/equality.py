"""What the equality tests send to a server and how they compare the answers with stock SGLang's."""

from __future__ import annotations

from redknot_sglang.testing.server import Server

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


def run_all(server: Server, max_new_tokens: int = 24, chat: bool = True) -> dict:
    """Greedy /generate (one by one, then batched) and /v1/chat/completions, with top logprobs."""
    greedy = {"temperature": 0, "max_new_tokens": max_new_tokens}
    out = {"generate": [], "cached": [], "top": [], "chat": [], "chat_tokens": [], "chat_top": []}
    for p in PROMPTS:
        r = server.generate({"text": p, "sampling_params": greedy, "return_logprob": True, "top_logprobs_num": 5})
        out["generate"].append(r["output_ids"])
        out["cached"].append(r["meta_info"]["cached_tokens"])
        out["top"].append([{tok: lp for lp, tok, _ in step} for step in r["meta_info"]["output_top_logprobs"]])
    out["batch"] = [r["output_ids"] for r in server.generate({"text": PROMPTS[:2], "sampling_params": greedy})]
    for messages in CHATS if chat else ():
        r = server.chat({"messages": messages, "temperature": 0, "max_tokens": max_new_tokens,
                         "logprobs": True, "top_logprobs": 5})
        out["chat"].append(r["choices"][0]["message"]["content"])
        steps = r["choices"][0]["logprobs"]["content"]
        out["chat_tokens"].append([s["token"] for s in steps])
        out["chat_top"].append([{t["token"]: t["logprob"] for t in s["top_logprobs"]} for s in steps])
    return out


def assert_same_up_to_bf16_ties(mine: list, stock: list, stock_top: list[dict], tie: float = 0.3) -> None:
    """Greedy tokens equal to stock's; a first divergence is allowed only where stock itself had a
    near tie (our token within ``tie`` nats of stock's best), as bf16 attention in another order
    can break such ties differently. After that the sequences are different texts (of any length:
    the tie may have been an end-of-sequence token)."""
    for step, (a, b) in enumerate(zip(mine, stock)):
        if a != b:
            top = stock_top[step]
            assert a in top and top[a] >= top[b] - tie, f"step {step}: {a!r} vs stock {b!r}, stock top {top}"
            return
    assert len(mine) == len(stock), f"same tokens, but {len(mine)} of them against stock's {len(stock)}"


def assert_equivalent(ours: dict, stock: dict) -> None:
    """Every /generate and chat answer equal to stock's up to bf16 near-ties."""
    for mine, theirs, top in zip(ours["generate"], stock["generate"], stock["top"]):
        assert_same_up_to_bf16_ties(mine, theirs, top)
    for mine, theirs, top in zip(ours["chat_tokens"], stock["chat_tokens"], stock["chat_top"]):
        assert_same_up_to_bf16_ties(mine, theirs, top)
