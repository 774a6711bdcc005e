"""GPU time of a step as a server's decode runs it: replayed from a CUDA graph (an eager call of a
small kernel mostly measures Python's launch). Used by the kernel benchmarks."""

from __future__ import annotations

from typing import Callable

import torch


def graph_ms(fn: Callable[[], object]) -> float:
    """Median time of ``fn`` replayed from a CUDA graph, in milliseconds."""
    from triton.testing import do_bench

    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return do_bench(graph.replay, warmup=50, rep=300, return_mode="median")
