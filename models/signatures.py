"""Which signatures keep a whole-backbone CUDA graph (``models.engine``): a bounded cache that admits by frequency.

A signature (batch bucket and each block's kind; at batch 1, the mask itself) is worth a graph only if it comes
back, and capturing one costs the batch that triggers it the capture's time. Masks are skewed but long-tailed: the
shipped ResNet-110 policy draws 1,970 distinct masks on the 10,000 CIFAR-10 test images. Admitting every signature
seen twice and dropping the least recently used keeps replacing common masks with passing ones; admitting one only
while there is room, or in place of a kept one seen less often, keeps the common ones: at batch 1 and 64 entries,
32.0 % of the test images replay a graph instead of 19.5 %, after 194 captures instead of 6,076
(``blockdrop bench signatures``: bench/results/signatures.md). Sightings are counted for at most
``100 x capacity`` signatures; past that every count is halved and those that reach zero are forgotten, so the
counts follow a drifting mix.

A cache that starts empty learns the common masks from the traffic, capturing while it serves. An artifact can
instead carry its policy's most frequent masks on the training images (``frequent_masks`` in its manifest, written
by ``blockdrop record-masks``), which the engine captures at start-up (``BucketedEngine.prefill_signatures``) and
this cache keeps as if each had been seen twice: live traffic displaces one only with a mask it sees more often.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Generic, TypeVar

import torch
from torch import Tensor

if TYPE_CHECKING:
    from models.artifacts import Manifest

Graph = TypeVar("Graph")


def mask_to_hex(mask: Tensor) -> str:
    """One mask [K] (bool) as hex digits, block 0 first: each digit holds four blocks, the last padded with zeros."""
    bits = mask.to(torch.int64).tolist()
    bits += [0] * (-len(bits) % 4)
    return "".join(f"{int(''.join(map(str, bits[i : i + 4])), 2):x}" for i in range(0, len(bits), 4))


def masks_from_hex(texts: list[str], num_blocks: int) -> Tensor:
    """The masks [len(texts), num_blocks] (bool) that ``mask_to_hex`` wrote."""
    digits = -(-num_blocks // 4)
    rows = []
    for text in texts:
        if len(text) != digits:
            raise ValueError(f"a mask of {num_blocks} blocks has {digits} hex digits, got {text!r}")
        bits = "".join(f"{int(digit, 16):04b}" for digit in text)
        if "1" in bits[num_blocks:]:
            raise ValueError(f"mask {text!r} keeps a block past the {num_blocks} the model has")
        rows.append([bit == "1" for bit in bits[:num_blocks]])
    return torch.tensor(rows, dtype=torch.bool).view(len(texts), num_blocks)


def most_frequent(masks: Tensor, top: int) -> list[tuple[str, int]]:
    """The ``top`` most frequent rows of ``masks`` [n, K] as (hex, count), most frequent first (ties: first seen)."""
    return Counter(mask_to_hex(row) for row in masks).most_common(top)


def format_counted_masks(ranked: list[tuple[str, int]]) -> str:
    """(hex, count) pairs as one line, ``HEX:COUNT`` separated by spaces (a manifest stays short and readable)."""
    return " ".join(f"{mask}:{count}" for mask, count in ranked)


def parse_counted_masks(text: str, num_blocks: int) -> tuple[Tensor, list[int]]:
    """The masks [m, num_blocks] and their counts that ``format_counted_masks`` wrote."""
    try:
        pairs = [(mask, int(count)) for mask, count in (token.split(":") for token in text.split())]
    except ValueError:
        raise ValueError(f"frequent masks must be HEX:COUNT tokens separated by spaces, got {text[:60]!r}") from None
    return masks_from_hex([mask for mask, _ in pairs], num_blocks), [count for _, count in pairs]


def recorded_masks(manifest: Manifest, threshold: float) -> Tensor | None:
    """The artifact's recorded ``frequent_masks`` [m, K], most frequent first, if they were drawn at ``threshold``
    (None where none were, or at another threshold: a policy draws other masks there); ValueError if unreadable."""
    record = manifest.frequent_masks
    if not record or record.get("threshold") != threshold:
        return None
    return parse_counted_masks(record.get("masks", ""), len(manifest.flops["blocks"]))[0]


class SignatureCache(Generic[Graph]):
    def __init__(self, capacity: int = 0):
        self.capacity = capacity
        self._entries: dict[tuple, Graph] = {}
        self._seen: Counter[tuple] = Counter()
        self.lookups = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: tuple) -> bool:
        return key in self._entries

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def get(self, key: tuple) -> Graph | None:
        """The graph kept for ``key``, or None; either way one more sighting of it."""
        self.lookups += 1
        self._seen[key] += 1
        if len(self._seen) > 100 * max(self.capacity, 1):
            self._age()
        graph = self._entries.get(key)
        if graph is not None:
            self.hits += 1
        return graph

    def wants(self, key: tuple) -> bool:
        """Whether a graph for ``key`` (just missed) would be kept: seen twice or more, and there is room or a kept
        signature has been seen less often."""
        count = self._seen[key]
        if key in self._entries or count < 2 or self.capacity < 1:
            return False
        return len(self._entries) < self.capacity or count > self._seen[self._least_seen()]

    def put(self, key: tuple, graph: Graph) -> None:
        """Keep ``graph`` for ``key``, dropping the least seen signature if the cache is full."""
        while self._entries and len(self._entries) >= self.capacity:
            del self._entries[self._least_seen()]
        if self.capacity > 0:
            self._entries[key] = graph

    def prefill(self, key: tuple, graph: Graph) -> bool:
        """Keep ``graph`` for ``key`` before any traffic, counted as seen twice; False (nothing kept) when full."""
        if len(self._entries) >= self.capacity:
            return False
        self._seen[key] = max(self._seen[key], 2)
        self._entries[key] = graph
        return True

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        while len(self._entries) > capacity:
            del self._entries[self._least_seen()]

    def clear(self) -> None:
        self._entries.clear()
        self._seen.clear()

    def _least_seen(self) -> tuple:
        return min(self._entries, key=self._seen.__getitem__)

    def _age(self) -> None:
        halved = {key: count // 2 for key, count in self._seen.items()}
        self._seen = Counter({key: count for key, count in halved.items() if count > 0 or key in self._entries})
