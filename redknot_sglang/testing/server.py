"""A real ``python -m sglang.launch_server`` process, for tests, benchmarks and device scripts.

The server runs in its own process group, so stopping it stops its scheduler and detokenizer
children too (SGLang's launcher alone may leave them draining).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import requests

# float32 on CPU: without AVX-512 (this CI host) torch's bf16 matmul is ~40x slower than float32
# (measured 1.2 vs 49 GFLOPS on one thread), which made the CPU soak run past CI's 90 minutes.
CPU_ARGS = ("--device", "cpu", "--cuda-graph-backend-prefill", "disabled", "--dtype", "float32")
REDKNOT_ARGS = ("--attention-backend", "redknot", "--radix-cache-backend", "redknot")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    pass


class Server:
    """``with Server(model, args) as s: s.generate(...)``; ``s.log()`` returns what it printed."""

    def __init__(
        self,
        model_path: str | Path,
        args: Sequence[str] = (),
        *,
        log_path: Optional[str | Path] = None,
        env: Optional[dict[str, str]] = None,
        timeout_s: float = 900.0,
    ):
        self.model_path = str(model_path)
        self.args = list(args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path) if log_path else Path(f"/tmp/sglang-{self.port}.log")
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.env.pop("TRITON_INTERPRET", None)  # tests set it for kernels; servers run real Triton or none
        self.timeout_s = timeout_s
        self.proc: Optional[subprocess.Popen] = None
        self.startup_s: Optional[float] = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Server:
        cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", self.model_path,
               "--port", str(self.port), *self.args]
        t0 = time.monotonic()
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True)
        while time.monotonic() - t0 < self.timeout_s:
            if self.proc.poll() is not None:
                raise ServerError(f"server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if requests.get(self.url + "/model_info", timeout=2).ok and "fired up" in self.log():
                    self.startup_s = time.monotonic() - t0
                    return self
            except requests.RequestException:
                pass
            time.sleep(1.0)
        self.stop()
        raise ServerError(f"server not ready after {self.timeout_s:.0f} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=15)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # children that outlived the launcher
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()
        self.proc = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    # ------------------------------------------------------------------ requests
    def post(self, path: str, payload: dict, timeout: float = 600.0) -> requests.Response:
        return requests.post(self.url + path, json=payload, timeout=timeout)

    def generate(self, payload: dict, timeout: float = 600.0) -> Any:
        r = self.post("/generate", payload, timeout)
        if not r.ok:
            raise ServerError(f"/generate {r.status_code}: {r.text}")
        return r.json()

    def redknot_stats(self) -> dict:
        """The first scheduler's pool, cache and document-store counters (``/get_server_info``)."""
        return requests.get(self.url + "/get_server_info", timeout=60).json()["internal_states"][0]["redknot"]

    def chat(self, payload: dict, timeout: float = 600.0) -> dict:
        r = self.post("/v1/chat/completions", {"model": "default", **payload}, timeout)
        if not r.ok:
            raise ServerError(f"/v1/chat/completions {r.status_code}: {r.text}")
        return r.json()
