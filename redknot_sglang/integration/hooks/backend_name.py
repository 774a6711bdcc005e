"""Name checks on the attention backend that a plugin backend must answer like its base backend.

Why a patch: ``sglang.srt.utils.common.support_triton(backend)`` decides by *name* whether the
Triton helpers for positions and KV-index writes may run (``compute_position``,
``write_cache_indices``, mrope). It returns True for every name but torch_native/intel_amx, so
``redknot`` on CPU would launch Triton kernels with no GPU driver. A hook on that function answers
for ``redknot`` what it answers for the base backend that serves our global heads.
"""

from __future__ import annotations

from typing import Callable

TARGET = "sglang.srt.utils.common.support_triton"


def support_triton(original: Callable[[str], bool], backend: str) -> bool:
    if backend == "redknot":
        from sglang.srt.runtime_context import get_server_args

        from redknot_sglang.config import get_redknot

        server_args = get_server_args()
        backend = get_redknot(server_args).resolve_base_backend(server_args.device)
    return original(backend)
