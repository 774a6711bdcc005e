"""Server benchmarks that run stock SGLang and RedKnot one side per device call.

A GPU call may run 600 s and a server takes 2-5 minutes to start, so a benchmark runs one side (and
possibly one context) per call and keeps what it measured in a partial file, carried from one call
to the next as an untracked file. Once every side is in, the benchmark writes its JSON and the
partial file is deleted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

SIDES = ("stock", "redknot")


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


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

    def complete(self) -> Optional[dict]:
        """Every side's results, or None while a side is missing."""
        sides = self.load()
        return sides if all(s in sides for s in SIDES) else None

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
