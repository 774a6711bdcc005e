"""``SegmentStore``: documents' per-head KV, cached once by content and reused at any offset.

Keys are position-independent: a document's own token ids, under a :class:`Namespace` of (model
fingerprint, tenant salt), never its absolute prefix. Each namespace is a radix tree over token
ids, so documents that share a beginning share nodes. Every document's KV is computed alone, at
positions ``[0, n)``; a node covering document positions ``[a, b)`` holds::

    global heads, positions [a, b)          k_global/v_global  [b-a, G, D]  (shared by every
                                                                             document below)
    local heads, positions [a, b) ∩ [0, S)  k_sink/v_sink      [.., L, D]    (the sink)
    local heads, the last T positions of    k_tail/v_tail      [min(n,T), L, D]  (on the node
      the document that ends at this node                                        where it ends)

with ``G``/``L`` the rank's global/local heads of all layers side by side (layer ``l``'s slice is
:meth:`HeadColumns.global_cols` / ``local_cols``), ``S`` the largest sink and ``W`` the largest
window of the profile. ``T`` (``tail``) is ``W`` by default: local heads never read further back
than sink + window, so placing a document needs no more of them. Selective recompute reads a
recomputed token's window anywhere in a document, so its servers keep local heads whole
(``tail`` = the longest document).

Tiers and eviction. Node KV lives on the store's device within ``device_bytes``; the coldest nodes
spill to the host tier (:class:`~redknot_sglang.reuse.host_pages.HostPages`: ``host_bytes`` taken
at start, pinned on CUDA) and come back on reuse. Coldness is GreedyDual-LFU: a node's priority is
``clock + hits`` at its last use, and the clock rises to the priority of each node dropped, so
frequently reused documents stay and stale ones age out. A node the host has no room for drops the
host's coldest leaves first, or is dropped itself if it is colder than they are. Only unlocked
leaves are dropped (a node's KV is a prefix of its children's documents); documents in use are
locked (:meth:`SegmentStore.lock` / :meth:`unlock`) and neither spill nor drop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from redknot_sglang.heads.layout import RankHeadLayout
from redknot_sglang.reuse.host_pages import PAGE_BYTES, HostPages, HostTensor

_PARTS = ("k_global", "v_global", "k_sink", "v_sink", "k_tail", "v_tail")


class StoreError(ValueError):
    """A document the store cannot take (malformed KV, too long, no room)."""


@dataclasses.dataclass(frozen=True)
class Namespace:
    """Documents are shared only within one namespace: the same model (its fingerprint digest)
    and the same tenant (SGLang's ``cache_salt`` / ``extra_key``; None for the public space)."""

    model: str
    salt: str | None = None


class HeadColumns:
    """Where each layer's global and local heads sit in the store's flat head dimension."""

    def __init__(self, layout: RankHeadLayout):
        g = [layer.num_global for layer in layout.layers]
        loc = [layer.num_local for layer in layout.layers]
        self.g_start = [sum(g[:i]) for i in range(len(g))] + [sum(g)]
        self.l_start = [sum(loc[:i]) for i in range(len(loc))] + [sum(loc)]
        self.num_global, self.num_local = sum(g), sum(loc)
        self.sink, self.window = layout.max_sink(), layout.max_window()

    def global_cols(self, layer: int) -> slice:
        return slice(self.g_start[layer], self.g_start[layer + 1])

    def local_cols(self, layer: int) -> slice:
        return slice(self.l_start[layer], self.l_start[layer + 1])


@dataclasses.dataclass
class DocumentKV:
    """One document's KV as computed at positions ``[0, n)`` (see the module docstring)."""

    k_global: torch.Tensor  # [n, G, D]
    v_global: torch.Tensor
    k_sink: torch.Tensor  # [min(n, S), L, D]
    v_sink: torch.Tensor
    k_tail: torch.Tensor  # [min(n, T), L, D]
    v_tail: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return self.k_global.shape[0]


@dataclasses.dataclass(eq=False)
class _Node:
    tokens: tuple[int, ...]  # edge label
    start: int  # document position of tokens[0]
    parent: _Node | None
    children: dict[int, _Node] = dataclasses.field(default_factory=dict)
    kv: dict[str, torch.Tensor | HostTensor] = dataclasses.field(default_factory=dict)  # k/v_global, k/v_sink, k/v_tail
    on_device: bool = True
    lock: int = 0
    priority: float = 0.0
    hits: int = 0

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.kv.values())


@dataclasses.dataclass(frozen=True)
class DocumentMatch:
    """A cached document, by the node where it ends (lock it while its KV is in use)."""

    namespace: Namespace
    last: _Node

    @property
    def nodes(self) -> list[_Node]:
        """The document's nodes, first token first (nodes split since the match included)."""
        out, node = [], self.last
        while node.parent is not None:
            out.append(node)
            node = node.parent
        if node.tokens:  # the walk did not end at a root: the document was dropped
            raise StoreError("redknot: the document was evicted from the segment store")
        return out[::-1]


class SegmentStore:
    def __init__(self, layout: RankHeadLayout, *, head_dim: int, dtype: torch.dtype, device: str,
                 device_bytes: int, host_bytes: int, max_document_tokens: int, tail: int | None = None,
                 host_page_bytes: int = PAGE_BYTES):
        self.cols = HeadColumns(layout)
        self.tail = self.cols.window if tail is None else tail
        self.head_dim, self.dtype, self.device = head_dim, dtype, torch.device(device)
        self.host = HostPages(host_bytes, self.device, page_bytes=host_page_bytes)
        self.device_budget, self.host_budget = device_bytes, self.host.capacity
        self.max_document_tokens = max_document_tokens
        self.device_used = 0
        self.clock = 0.0
        self._roots: dict[Namespace, _Node] = {}

    # ------------------------------------------------------------------ lookups
    def match(self, ns: Namespace, tokens: Sequence[int]) -> DocumentMatch | None:
        """The cached document with exactly these tokens in this namespace, or None. A hit counts
        as a use of every node of the document."""
        nodes = self._document(ns, tokens)
        if nodes is None:
            return None
        for node in nodes:
            self._touch(node)
        return DocumentMatch(ns, nodes[-1])

    def contains(self, ns: Namespace, tokens: Sequence[int]) -> bool:
        """Whether the document is cached (not counted as a use)."""
        return self._document(ns, tokens) is not None

    def gather(self, match: DocumentMatch) -> DocumentKV:
        """The document's KV on the store's device (spilled nodes come back first); a document of
        one node gives the node's own tensors, to be read, not written."""
        self.lock(match)
        try:
            for node in match.nodes:
                self._to_device(node)
            nodes = match.nodes
            parts = {p: _joined([n.kv[p] for n in nodes if p in n.kv]) for p in _PARTS[:4]}
            return DocumentKV(**parts, k_tail=match.last.kv["k_tail"], v_tail=match.last.kv["v_tail"])
        finally:
            self.unlock(match)

    def lock(self, match: DocumentMatch) -> None:
        for node in match.nodes:
            node.lock += 1

    def unlock(self, match: DocumentMatch) -> None:
        for node in match.nodes:
            if node.lock <= 0:
                raise RuntimeError("redknot: SegmentStore.unlock without lock")
            node.lock -= 1

    # ------------------------------------------------------------------ insertion
    def insert(self, ns: Namespace, tokens: Sequence[int], kv: DocumentKV) -> DocumentMatch:
        """Cache a document computed alone at positions ``[0, n)``; nodes shared with documents
        already cached keep their KV (it is the same: a causal model, the same positions)."""
        tokens = tuple(int(t) for t in tokens)
        self._check(tokens, kv)
        nbytes = sum(getattr(kv, p).numel() for p in _PARTS) * self.dtype.itemsize
        if nbytes > self.device_budget:
            raise StoreError(f"redknot: document KV of {nbytes} bytes is larger than the segment store's "
                             f"{self.device_budget} device bytes")
        node = self._roots.setdefault(ns, _Node(tokens=(), start=0, parent=None))
        path: list[_Node] = []
        pos = 0
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                child = _Node(tokens=tokens[pos:], start=pos, parent=node)
                child.kv = self._slices(kv, pos, len(tokens))
                node.children[tokens[pos]] = child
                self._account(child, +1)
            else:
                common = _common_prefix(child.tokens, tokens[pos:])
                if common < len(child.tokens):
                    child = self._split(child, common)
            path.append(child)
            node, pos = child, child.end
        if "k_tail" not in node.kv:
            self._to_device(node, fit=False)
            tail = {"k_tail": kv.k_tail, "v_tail": kv.v_tail}
            node.kv.update({p: self._place(t) for p, t in tail.items()})
            self.device_used += sum(t.nbytes for t in tail.values())
        match = DocumentMatch(ns, node)
        for n in path:
            self._touch(n)
        self.lock(match)
        try:
            self._fit()
        finally:
            self.unlock(match)
        return match

    def _check(self, tokens: tuple[int, ...], kv: DocumentKV) -> None:
        n = len(tokens)
        if n == 0:
            raise StoreError("redknot: an empty document cannot be cached")
        if n > self.max_document_tokens:
            raise StoreError(f"redknot: document of {n} tokens is longer than the {self.max_document_tokens} "
                             "tokens the segment store takes")
        c, d = self.cols, self.head_dim
        want = {"k_global": (n, c.num_global, d), "k_sink": (min(n, c.sink), c.num_local, d),
                "k_tail": (min(n, self.tail), c.num_local, d)}
        for part in _PARTS:
            t = getattr(kv, part)
            shape = want[part.replace("v_", "k_")]
            if tuple(t.shape) != shape:
                raise StoreError(f"redknot: document KV {part} has shape {tuple(t.shape)}, expected {shape} "
                                 f"({n} tokens; {c.num_global} global / {c.num_local} local head-layers, "
                                 f"sink {c.sink}, tail {self.tail}, head_dim {d})")

    def _slices(self, kv: DocumentKV, a: int, b: int) -> dict[str, torch.Tensor]:
        out = {"k_global": kv.k_global[a:b], "v_global": kv.v_global[a:b]}
        if a < self.cols.sink:
            out.update(k_sink=kv.k_sink[a:b], v_sink=kv.v_sink[a:b])
        return {p: self._place(t) for p, t in out.items()}

    def _split(self, node: _Node, at: int) -> _Node:
        """Cut ``node``'s edge after ``at`` tokens (a spilled node comes back first); returns the
        new upper node."""
        self._to_device(node, fit=False)
        upper = _Node(tokens=node.tokens[:at], start=node.start, parent=node.parent,
                      on_device=node.on_device, lock=node.lock, priority=node.priority, hits=node.hits)
        sink_cut = max(0, min(at, self.cols.sink - node.start))
        for p in ("k_global", "v_global"):
            upper.kv[p], node.kv[p] = node.kv[p][:at].clone(), node.kv[p][at:].clone()
        for p in ("k_sink", "v_sink"):
            if p in node.kv:
                upper.kv[p] = node.kv[p][:sink_cut].clone()
                rest = node.kv.pop(p)[sink_cut:]
                if rest.shape[0]:
                    node.kv[p] = rest.clone()
        node.parent.children[node.tokens[0]] = upper
        node.tokens, node.start, node.parent = node.tokens[at:], node.start + at, upper
        upper.children[node.tokens[0]] = node
        return upper

    # ------------------------------------------------------------------ tiers and eviction
    def _place(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, self.dtype).contiguous()

    def _account(self, node: _Node, sign: int) -> None:
        """Count a device node's bytes in or out (host bytes are the host tier's pages in use)."""
        if node.on_device:
            self.device_used += sign * node.nbytes()

    def _touch(self, node: _Node) -> None:
        node.hits += 1
        node.priority = self.clock + node.hits

    def _to_device(self, node: _Node, fit: bool = True) -> None:
        """Bring a spilled node back (``fit``: then make room on the device)."""
        if node.on_device:
            return
        self._account(node, -1)
        host, node.kv = node.kv, {p: self.host.get(h, self.device) for p, h in node.kv.items()}
        for h in host.values():
            self.host.free(h)
        node.on_device = True
        self._account(node, +1)
        if fit:
            self._fit()

    def _spill(self, node: _Node) -> None:
        self._account(node, -1)
        node.kv = {p: self.host.put(t) for p, t in node.kv.items()}
        node.on_device = False
        self._account(node, +1)

    def _drop(self, node: _Node) -> None:
        self._account(node, -1)
        self.clock = max(self.clock, node.priority)
        del node.parent.children[node.tokens[0]]
        self._free_host(node)
        _release(node)

    def _free_host(self, node: _Node) -> None:
        if not node.on_device:
            for h in node.kv.values():
                self.host.free(h)

    def _nodes(self) -> list[_Node]:
        out, stack = [], [c for r in self._roots.values() for c in r.children.values()]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    def _fit(self) -> None:
        """Move the coldest unlocked device nodes off the device until its budget holds: to the
        host (:meth:`_off_device`)."""
        if self.device_used <= self.device_budget:
            return
        for node in sorted((n for n in self._nodes() if n.on_device and not n.lock), key=lambda n: n.priority):
            self._off_device(node)
            if self.device_used <= self.device_budget:
                return
        raise StoreError(f"redknot: segment store full on the device ({self.device_used} of "
                         f"{self.device_budget} bytes, all in use)")

    def _off_device(self, node: _Node) -> None:
        """Spill ``node`` to the host, which first drops its coldest unlocked leaves to make room
        while they are colder than ``node`` (a leaf; an inner node takes any); a leaf the host
        keeps no room for is dropped, an inner one stays."""
        need = sum(self.host.pages_for(t.nbytes) for t in node.kv.values()) * self.host.page_bytes
        while self.host.free_bytes < need:
            leaves = [n for n in self._nodes() if not n.on_device and not n.lock and not n.children]
            victim = min(leaves, key=lambda n: n.priority, default=None)
            if victim is None or (not node.children and victim.priority >= node.priority):
                break
            self._drop(victim)
        if self.host.free_bytes >= need:
            self._spill(node)
        elif not node.children:
            self._drop(node)

    def clear(self) -> None:
        """Forget every document (SGLang's ``/flush_cache``); nothing may be locked."""
        nodes = self._nodes()
        if any(n.lock for n in nodes):
            raise RuntimeError("redknot: SegmentStore.clear while documents are in use")
        for node in nodes:
            self._free_host(node)
            _release(node)
        self._roots.clear()
        self.device_used = 0

    # ------------------------------------------------------------------ introspection
    @property
    def host_used(self) -> int:
        """Bytes of the host tier's pages that spilled nodes hold."""
        return self.host.capacity - self.host.free_bytes

    def _document(self, ns: Namespace, tokens: Sequence[int]) -> list[_Node] | None:
        """The nodes of a cached document (one ends there, its tail held), or None."""
        nodes = self._walk(ns, tuple(tokens))
        return nodes if nodes is not None and "k_tail" in nodes[-1].kv else None

    def _walk(self, ns: Namespace, tokens: tuple[int, ...]) -> list[_Node] | None:
        node, pos, path = self._roots.get(ns), 0, []
        while node is not None and pos < len(tokens):
            node = node.children.get(tokens[pos])
            if node is None or tokens[pos : node.end] != node.tokens:
                return None
            path.append(node)
            pos = node.end
        return path if path and pos == len(tokens) else None

    def stats(self) -> dict:
        nodes = self._nodes()
        return {"nodes": len(nodes), "documents": sum("k_tail" in n.kv for n in nodes),
                "device_bytes": self.device_used, "host_bytes": self.host_used,
                "spilled_nodes": sum(not n.on_device for n in nodes)}


def _release(node: _Node) -> None:
    """Give a dropped node's KV back at once: parent and children point at each other, so without
    this the tensors wait for Python's cycle collector (device memory grew by the whole store on
    every ``/flush_cache`` of a serving run until the GPU ran out)."""
    node.kv = {}
    node.children = {}
    node.parent = None


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
