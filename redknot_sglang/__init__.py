"""RedKnot for SGLang: head-aware KV cache management, loaded as an SGLang plugin."""

from __future__ import annotations

__version__ = "0.1.0"
