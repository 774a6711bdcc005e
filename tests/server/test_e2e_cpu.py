"""End to end on CPU: real SGLang servers with the plugin, against a stock server on the same
model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import pytest

from redknot_sglang.heads.synthetic import synthetic_profile
from redknot_sglang.testing.equality import assert_equivalent, run_all
from redknot_sglang.testing.server import CPU_ARGS, REDKNOT_ARGS, Server

COMMON = (*CPU_ARGS, "--max-total-tokens", "8192", "--random-seed", "0")
DOCS = ["Document A: the red box holds seven coins and a key.",
        "Document B: the blue box is empty except for a map of the old harbour and its lights."]
DOC_PROMPT = f"Read the documents.\n{DOCS[0]}\n{DOCS[1]}\nQuestion: what does the red box hold? Answer:"


def _generate(server, marks, text=DOC_PROMPT):
    return server.post("/generate", {"text": text, "sampling_params": {
        "temperature": 0, "max_new_tokens": 8, "custom_params": {"redknot_documents": marks}}})


@pytest.fixture(scope="module")
def stock(smollm2):
    """The stock server's answers, collected before any redknot server starts: an idle SGLang CPU
    server keeps a core busy, so the module runs one server at a time (the all-global one is
    shared by the tests at the end)."""
    with Server(smollm2, COMMON) as server:
        return {"outputs": run_all(server), "marked": _generate(server, [[2, 12]])}


@pytest.fixture(scope="module")
def stock_outputs(stock):
    return stock["outputs"]


@pytest.fixture(scope="module")
def all_global_server(smollm2):
    with Server(smollm2, (*COMMON, *REDKNOT_ARGS, "--redknot-max-document-tokens", "16")) as server:
        yield server


def test_head_split_with_covering_windows_matches_stock(smollm2, stock_outputs, tmp_path, smollm2_fingerprint):
    """15% global heads; local heads with a window longer than every prompt + output, so each head
    still sees every key: the whole head-split path (hybrid-SWA flip, pools, head permutation,
    sink rows and cache, two-launch backend) must give the stock tokens, up to bf16 near-ties."""
    profile = synthetic_profile(smollm2_fingerprint, global_ratio=0.15, window=2048, sink=4, seed=1)
    path = tmp_path / "covering.json"
    profile.save(path)
    args = (*COMMON, *REDKNOT_ARGS, "--redknot-head-profile", str(path), "--redknot-window-pool-ratio", "0.75")
    with Server(smollm2, args) as server:
        ours = run_all(server)
        log = server.log()
    assert "impl=HeadSplitRadixCache" in log and "layers reordered" in log
    assert_equivalent(ours, stock_outputs)
    assert ours["cached"][3] > 300  # the shared LONG prefix is reused (global + local + sink)


def test_all_global_redknot_matches_stock_token_for_token(all_global_server, stock_outputs):
    """With the all-global profile the redknot backend and cache are stock's kernels and cache:
    the same greedy tokens on /generate (single and batched) and /v1/chat/completions."""
    ours = run_all(all_global_server)
    log = all_global_server.log()
    assert "source=registered('redknot')" in log
    assert "all heads global; base backend torch_native" in log
    for key in ("generate", "batch", "chat", "cached"):
        assert ours[key] == stock_outputs[key], key
    # the radix cache works as stock: the second LONG prompt reuses the first one's prefix
    assert ours["cached"][3] > 300
    assert "Paris" in ours["chat"][0]


def test_document_marks_are_checked_and_bad_ones_get_400(all_global_server, stock):
    """Marked documents pass (token ranges on /generate, text pieces on chat's extra_body);
    overlapping, out-of-range, empty, too long or malformed marks get HTTP 400 naming the
    problem, and the server goes on serving; a server without the redknot cache refuses marks."""
    server = all_global_server
    plain = server.generate({"text": DOC_PROMPT, "sampling_params": {"temperature": 0, "max_new_tokens": 8}})
    marked = _generate(server, [[2, 12], [14, 28]])
    assert marked.status_code == 200, marked.text
    assert marked.json()["output_ids"] == plain["output_ids"]  # marks alone change nothing yet
    chat = server.post("/v1/chat/completions", {
        "model": "default", "messages": [{"role": "user", "content": DOC_PROMPT}], "max_tokens": 4,
        "custom_params": {"redknot_documents": [{"text": DOCS[0]}]}})
    assert chat.status_code == 200, chat.text
    for marks, message in (
        ([[2, 12], [10, 30]], "overlaps"),
        ([[2, 5000]], "outside the prompt"),
        ([[3, 3]], "empty span"),
        ([[0, 20]], "longer than the 16 tokens"),
        ([{"text": "not in this prompt at all"}], "not in the prompt"),
        ("doc", "non-empty list"),
    ):
        r = _generate(server, marks)
        assert r.status_code == 400, (marks, r.text)
        assert message in r.text and "redknot_documents" in r.text, r.text
    assert server.generate({"text": "The capital of France is", "sampling_params": {"max_new_tokens": 4}})
    refused = stock["marked"]
    assert refused.status_code == 400 and "--radix-cache-backend redknot" in refused.text


def test_frontend_program_marks_its_documents(all_global_server):
    """An sgl.function with document(): the marks reach the server (a document longer than the
    server's limit fails that generation with the server's message; a short one is served)."""
    import sglang as sgl

    from redknot_sglang.integration.frontend import RedknotEndpoint, document

    @sgl.function
    def rag(s, doc):
        s += "Read the document.\n"
        document(s, doc)
        s += "\nQuestion: what does the red box hold? Answer:" + sgl.gen("answer", max_tokens=6, temperature=0)

    backend = RedknotEndpoint(all_global_server.url)
    ok = rag.run(doc=DOCS[0], backend=backend)
    assert ok.error() is None and ok["answer"]
    too_long = rag.run(doc=DOCS[1], backend=backend)  # 20 tokens, the server takes 16
    assert "longer than the 16 tokens" in str(too_long.error())
