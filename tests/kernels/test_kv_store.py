"""The one-launch K/V store (Triton; interpreter on CPU) writes exactly what the head-split pool's
torch path writes: global heads to the full pool, local heads to their window slots and, below the
sink, to their request's sink row. Layers with no global and with no local head included."""

from __future__ import annotations

import pytest
import torch

from redknot_sglang.heads import HeadProfile, RankHeadLayout
from redknot_sglang.heads.profile import ModelFingerprint
from redknot_sglang.kernels.kv_store import store_kv
from redknot_sglang.integration.head_split_pool import HeadSplitKVPool, sink_targets

D, HKV, SINK = 16, 3, 4
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # natively on a GPU, the interpreter on CPU
FP = ModelFingerprint(architecture="LlamaForCausalLM", num_layers=3, num_attention_heads=HKV * 2,
                      num_kv_heads=HKV, head_dim=D, rope_theta=1e4)
CLASSES = [[True, False, False], [False, False, False], [True, True, True]]


def _pool(layout: RankHeadLayout, dtype: torch.dtype) -> HeadSplitKVPool:
    pool = HeadSplitKVPool(layout=layout, size=64, size_swa=40, rows=4, sink_blocks=1, page_size=1,
                           dtype=dtype, head_dim=D, device=DEV)
    mapping = torch.zeros(65, dtype=torch.int64)
    mapping[1:41] = torch.randperm(40, generator=torch.Generator().manual_seed(1)) + 1  # slots 41+ unmapped
    pool.register_mapping(mapping.to(DEV))
    return pool


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_kernel_writes_what_the_torch_path_writes(dtype):
    layout = RankHeadLayout(HeadProfile.from_classes(FP, CLASSES, window=8, sink=SINK, method="test"))
    ref, ours = _pool(layout, dtype), _pool(layout, dtype)
    g = torch.Generator().manual_seed(0)
    loc = (torch.randperm(40, generator=g)[:12] + 1).to(DEV)  # 12 tokens with window slots
    rows = torch.tensor([1] * 7 + [3] * 5, device=DEV)
    positions = torch.tensor([0, 1, 2, 3, 4, 5, 6, 2, 3, 4, 5, 6], device=DEV)  # some below the sink
    for lid in range(3):
        k = torch.randn(12, HKV, D, generator=g).to(DEV, dtype)  # the model's dtype is the pool's
        v = torch.randn(12, HKV, D, generator=g).to(DEV, dtype)
        layer = type("Layer", (), {"layer_id": lid})()
        ref.set_kv_buffer(layer, loc, k, v)
        srows, spos = sink_targets(rows, positions, SINK)
        gl = layout.layers[lid].num_global
        ref.store_sink(lid, srows, spos, k[:, gl:], v[:, gl:])
        store_kv(k, v, loc, rows, positions, *ours.get_kv_buffer(lid), *ours.local_buffers(lid),
                 ours.full_to_swa_index_mapping, gl)
        for a, b in ((ref.get_kv_buffer(lid), ours.get_kv_buffer(lid)), (ref.local_buffers(lid), ours.local_buffers(lid))):
            for x, y in zip(a, b):
                assert torch.equal(x[1:] if x.dim() == 4 else x, y[1:] if y.dim() == 4 else y), lid
