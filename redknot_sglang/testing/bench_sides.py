"""Server benchmarks that run stock SGLang and RedKnot one side per device call.

A GPU call may run 600 s and a server takes 2-5 minutes to start, so a benchmark runs one side (and
possibly one context) per call and keeps what it measured in a partial file, carried from one call
to the next as an untracked file. Once every side is in, the benchmark writes its JSON and deletes
the partial file (``capacity_decode.py`` keeps it: a later call may add a context to either side).
Both sides get the same flags but ours (:func:`side_flags`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

SIDES = ("stock", "redknot")
GLOBAL = 0.15  # the benchmarks' profile: 15% global heads


def bench_profile(model: Path, window: int, sink: int, directory: Path, global_ratio: float = GLOBAL) -> Path:
    """The benchmarks' seeded synthetic profile for ``model`` (``global_ratio`` of its heads
    global), written once into ``directory``."""
    from redknot_sglang.heads.fingerprint import fingerprint_of_model_path
    from redknot_sglang.heads.synthetic import synthetic_profile

    path = directory / f"{model.name}_{round(100 * global_ratio)}pct_w{window}_s{sink}.heads.json"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        synthetic_profile(fingerprint_of_model_path(str(model)), global_ratio=global_ratio, window=window, sink=sink,
                          seed=0).save(path)
    return path


def bench_setup(cpu_smoke: bool, results: Path) -> tuple[Path, Path, Path]:
    """(model, results folder, profile) of a two-sided benchmark: the Llama-3.1-8B shape with the
    15% profile (window 1024, sink 64) into ``results``, or with ``cpu_smoke`` SmolLM2 at tiny sizes
    into /tmp (it checks the procedure, not speed)."""
    from redknot_sglang.testing.models import llama8b_dir, smollm2_dir

    model = smollm2_dir() if cpu_smoke else llama8b_dir()
    results = Path("/tmp/redknot-bench-smoke") if cpu_smoke else results
    results.mkdir(parents=True, exist_ok=True)
    window, sink = (64, 4) if cpu_smoke else (1024, 64)
    return model, results, bench_profile(model, window, sink, results)


def side_flags(side: str, *, context_len: int, cpu_smoke: bool, mem_fraction_static: float, profile: Path) -> list[str]:
    """Server flags of one side: the same for both but the attention backend and cache (stock:
    FlashInfer on the GPU, torch_native on CPU; redknot: ours with ``profile``). On the GPU the model
    has dummy weights and prefill runs without CUDA graphs (minutes of capture per server)."""
    from redknot_sglang.testing.server import CPU_ARGS, REDKNOT_ARGS

    flags = ["--context-length", str(context_len + 64), "--random-seed", "0"]
    if cpu_smoke:  # the whole procedure on this CPU, SmolLM2, tiny sizes: checks the script, not speed
        flags += CPU_ARGS
    else:
        flags += ["--load-format", "dummy", "--mem-fraction-static", str(mem_fraction_static),
                  "--cuda-graph-backend-prefill", "disabled"]
    if side == "stock":
        return [*flags, "--attention-backend", "torch_native" if cpu_smoke else "flashinfer"]
    return [*flags, *REDKNOT_ARGS, "--redknot-head-profile", str(profile)]


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def sides_result(sides: dict, model: Path, request: str, rows: list[dict], **extra) -> dict:
    """A two-sided benchmark's JSON: device, model, what a request is, the rows, each side's flags
    and everything each side measured."""
    return {"device": sides["stock"]["device"], "model": f"{model.name} (dummy weights)", "request": request,
            **extra, "flags": {s: v["flags"] for s, v in sides.items()}, "results": rows, "sides": sides}


class SidesFile:
    """``{side: what that side measured}`` on disk."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def side(self, side: str) -> dict:
        return self.load().get(side, {})

    def save(self, side: str, out: dict) -> None:
        sides = self.load()
        sides[side] = out
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(sides, indent=2))

    def complete(self, expected: tuple[str, ...] = SIDES) -> Optional[dict]:
        """Every ``expected`` side's results, or None while one is missing."""
        sides = self.load()
        return sides if all(s in sides for s in expected) else None

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
