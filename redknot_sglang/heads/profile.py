"""The head profile: which (layer, kv_head) of a model is global and which is local.

A profile is a JSON file made once per model (by the profiler, by hand, or built in) and loaded by
the server at start-up. It records:

* ``model``: the fingerprint of the model it was made for (architecture, layer and head counts,
  head_dim, RoPE settings). Loading a profile for another model is an error that names the field.
* ``provenance``: how it was made (method, parameters, tool version, fidelity-gate results).
* ``heads[layer][kv_head]``: the class of each KV head. A *global* head attends over the whole
  context; a *local* head at query position ``i`` attends to keys ``[0, sink)`` and
  ``[i - window + 1, i]`` only.

Heads are numbered as in the checkpoint (all KV heads of the model, before tensor parallelism);
:mod:`redknot_sglang.heads.layout` derives what one TP rank holds.
"""

from __future__ import annotations

import datetime as _dt
import json
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

FORMAT = "redknot-head-profile/1"
BUILTIN_ALL_GLOBAL = "all-global"
SHIPPED = Path(__file__).parent / "profiles"  # measured profiles shipped with the package, NAME.heads.json


class ProfileError(ValueError):
    """A profile that cannot be used: malformed, impossible, or made for another model."""


class HeadClass(str, Enum):
    GLOBAL = "global"
    LOCAL = "local"


class HeadSpec(BaseModel):
    """One KV head. ``window``/``sink`` are set for local heads only."""

    model_config = ConfigDict(extra="forbid")

    kind: HeadClass
    window: Optional[int] = None
    sink: Optional[int] = None
    score: Optional[float] = None

    @property
    def is_global(self) -> bool:
        return self.kind is HeadClass.GLOBAL


class ModelFingerprint(BaseModel):
    """What a profile must agree with in the served model."""

    model_config = ConfigDict(extra="forbid")

    architecture: str
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rope_type: str = "default"
    rope_factor: Optional[float] = None

    def mismatches(self, served: ModelFingerprint) -> list[str]:
        """Human-readable differences, profile value first."""
        out = []
        for name in type(self).model_fields:
            mine, theirs = getattr(self, name), getattr(served, name)
            if isinstance(mine, float) and isinstance(theirs, float):
                same = abs(mine - theirs) <= 1e-6 * max(1.0, abs(theirs))
            else:
                same = mine == theirs
            if not same:
                out.append(f"{name}: profile has {mine!r}, served model has {theirs!r}")
        return out


class Provenance(BaseModel):
    model_config = ConfigDict(extra="allow")

    method: str
    created: str
    tool: str
    params: dict[str, Any] = {}
    fidelity: Optional[dict[str, Any]] = None


class HeadProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["redknot-head-profile/1"] = FORMAT
    model: ModelFingerprint
    provenance: Provenance
    heads: list[list[HeadSpec]]

    @model_validator(mode="after")
    def _check_heads(self) -> HeadProfile:
        problems = []
        if len(self.heads) != self.model.num_layers:
            problems.append(
                f"heads: {len(self.heads)} layers listed, model.num_layers is {self.model.num_layers}"
            )
        for layer, row in enumerate(self.heads):
            if len(row) != self.model.num_kv_heads:
                problems.append(
                    f"heads[{layer}]: {len(row)} kv heads listed, "
                    f"model.num_kv_heads is {self.model.num_kv_heads}"
                )
            for h, spec in enumerate(row):
                where = f"layer {layer}, kv_head {h}"
                if spec.is_global:
                    if spec.window is not None or spec.sink is not None:
                        problems.append(f"{where}: a global head takes no window/sink")
                    continue
                if spec.window is None or spec.window < 1:
                    problems.append(f"{where}: local head needs window >= 1 (got {spec.window})")
                if spec.sink is None or spec.sink < 0:
                    problems.append(f"{where}: local head needs sink >= 0 (got {spec.sink})")
        if problems:
            raise ValueError("; ".join(problems[:8]) + (" ..." if len(problems) > 8 else ""))
        return self

    # ------------------------------------------------------------------ construction / IO
    @classmethod
    def all_global(cls, model: ModelFingerprint) -> HeadProfile:
        """The built-in profile: every head global (RedKnot then serves exactly as dense)."""
        return cls.from_classes(
            model,
            [[True] * model.num_kv_heads for _ in range(model.num_layers)],
            window=0,
            sink=0,
            method=f"builtin:{BUILTIN_ALL_GLOBAL}",
        )

    @classmethod
    def from_classes(
        cls,
        model: ModelFingerprint,
        is_global: list[list[bool]],
        *,
        window: int,
        sink: int,
        method: str,
        params: Optional[dict[str, Any]] = None,
        scores: Optional[list[list[float]]] = None,
        fidelity: Optional[dict[str, Any]] = None,
    ) -> HeadProfile:
        """A profile whose local heads all share one ``window`` and ``sink``."""
        from redknot_sglang import __version__

        heads = [
            [
                HeadSpec(
                    kind=HeadClass.GLOBAL if g else HeadClass.LOCAL,
                    window=None if g else window,
                    sink=None if g else sink,
                    score=None if scores is None else float(scores[layer][h]),
                )
                for h, g in enumerate(row)
            ]
            for layer, row in enumerate(is_global)
        ]
        return cls(
            model=model,
            provenance=Provenance(
                method=method,
                created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                tool=f"redknot_sglang {__version__}",
                params=params or {},
                fidelity=fidelity,
            ),
            heads=heads,
        )

    @classmethod
    def load(cls, path: str | Path) -> HeadProfile:
        """Load a profile file, or a shipped one by name (``smollm2-135m-instruct``)."""
        path = Path(path)
        if not path.exists() and (SHIPPED / f"{path}.heads.json").exists():
            path = SHIPPED / f"{path}.heads.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ProfileError(f"head profile {str(path)!r} does not exist") from None
        except json.JSONDecodeError as e:
            raise ProfileError(f"head profile {str(path)!r} is not valid JSON: {e}") from None
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise ProfileError(f"head profile {str(path)!r} is malformed: {_describe(e)}") from None

    def save(self, path: str | Path) -> None:
        """Write JSON with one line per layer, so a profile reads as a layers x heads table."""
        data = self.model_dump(mode="json", exclude_none=True)
        rows = ",\n    ".join(json.dumps(row, separators=(",", ":")) for row in data.pop("heads"))
        head = json.dumps(data, indent=2)[:-2]
        Path(path).write_text(f'{head},\n  "heads": [\n    {rows}\n  ]\n}}\n')

    # ------------------------------------------------------------------ checks and summaries
    def check_model(self, served: ModelFingerprint, *, context_len: Optional[int] = None) -> None:
        """Raise :class:`ProfileError` unless this profile fits the served model."""
        diffs = self.model.mismatches(served)
        if diffs:
            raise ProfileError(
                "head profile was made for another model ("
                + self.model.architecture
                + "): "
                + "; ".join(diffs)
            )
        if context_len is not None:
            for layer, h, spec in self.local_heads():
                if spec.window + spec.sink >= context_len:
                    raise ProfileError(
                        f"layer {layer}, kv_head {h}: window + sink = {spec.window + spec.sink} "
                        f">= context length {context_len}; such a head is not local, "
                        "mark it global or shrink its window"
                    )

    @property
    def gated_length(self) -> Optional[int]:
        """The prompt length the profiler measured this profile's fidelity at (None: not recorded)."""
        fidelity = self.provenance.fidelity or {}
        return fidelity.get("gated_length")

    def length_warning(self, context_len: Optional[int]) -> Optional[str]:
        """A warning when requests may be longer than the length this profile was gated at."""
        gated = self.gated_length
        if gated is None or context_len is None or context_len <= gated or self.all_heads_global:
            return None
        return (f"head profile was checked against dense attention at prompts of up to {gated} tokens; "
                f"the context length is {context_len}: its fidelity on longer prompts is not measured "
                f"(re-profile with `python -m redknot_sglang.profile --target-length {context_len}`)")

    def local_heads(self):
        for layer, row in enumerate(self.heads):
            for h, spec in enumerate(row):
                if not spec.is_global:
                    yield layer, h, spec

    def is_global_matrix(self) -> list[list[bool]]:
        return [[spec.is_global for spec in row] for row in self.heads]

    @property
    def num_heads(self) -> int:
        return self.model.num_layers * self.model.num_kv_heads

    @property
    def global_fraction(self) -> float:
        return sum(map(sum, self.is_global_matrix())) / self.num_heads

    @property
    def all_heads_global(self) -> bool:
        return all(map(all, self.is_global_matrix()))

    def ideal_factor(self, context_len: int) -> float:
        """KV memory of dense over KV memory of this profile for one ``context_len`` request:
        ``1 / (g + (1 - g) * (sink + window) / L)``, per head, capped at L."""
        total = 0.0
        for row in self.heads:
            for spec in row:
                kept = context_len if spec.is_global else min(context_len, spec.window + spec.sink)
                total += kept / context_len
        return self.num_heads / total


def _describe(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:8]:
        loc = err["loc"]
        where = ""
        for item in loc:
            where += f"[{item}]" if isinstance(item, int) else (f".{item}" if where else str(item))
        parts.append(f"{where or 'profile'}: {err['msg']}")
    return "; ".join(parts)
