"""The bucketed executor: BlockDrop over tensor shapes that do not depend on the mask, so that every piece of it can
be captured once in a CUDA graph and replayed.

The plain executor (``models.blockdrop.run_backbone``) gathers exactly the rows that keep a block, so each block
call has a shape of its own; nothing of it can be captured. Here:

- the batch is padded to a *batch bucket* B (``bucket_sizes``) and every activation lives in a static buffer of
  B rows, one per stage, updated in place;
- for each block the rows that keep it are listed in a static index table, padded to a *kept-row bucket* P: the
  padded entries point at rows that do not keep the block, and a static ``valid`` flag writes their old value
  back, so their block result is discarded. A block that every real row keeps runs on all B rows; one whose P
  would be B runs on all B rows with the mask selecting (no gather); one that no row keeps is skipped.

So a block call has one of a few static shapes: (B, block, P). The host waits once per batch, for the policy's
mask (the table is built from it on the host and sent in one copy, only when some block gathers: never at batch
1, where every block is run or skipped); everything else is queued. On CPU the pieces
run eagerly (that is how the tests check them against the plain executor); on CUDA, ``capture`` records each
piece in a CUDA graph within a time and memory budget, and a shape not captured runs eagerly. Plain networks (and
BlockDrop in ``full`` mode) run as one piece per batch bucket. Optionally (``signature_graphs``) the whole backbone
is also captured once per *signature* (batch bucket and each block's kind) that repeats, and replayed as one graph;
``prefill_signatures`` captures the signatures of given masks (an artifact's most frequent) at start-up.

Bucket sizes follow vLLM's (1, 2, 4, then multiples of 8), with the step doubling every octave above 32 so that
a batch of 2048 needs 31 buckets rather than 256 while no batch is padded by more than 7 rows or a quarter,
whichever is more.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from models.blockdrop import BlockDropModel, InferenceResult, Mode, gather_rows, scatter_rows_
from models.signatures import SignatureCache

log = logging.getLogger(__name__)


def bucket_sizes(limit: int) -> list[int]:
    """Bucket sizes up to (and including) ``limit``: 1, 2, 4, 8, 16, 24, 32, then four per doubling, each a multiple
    of 8 (40, 48, 56, 64, 80, 96, 112, 128, 160, ...); the last is ``limit`` itself when it falls between two."""
    if limit < 1:
        raise ValueError(f"the largest bucket must be >= 1, got {limit}")
    sizes = [1, 2, 4, 8, 16, 24, 32]
    while sizes[-1] < limit:
        sizes.append(sizes[-1] + max(8, (1 << (sizes[-1].bit_length() - 1)) // 4))
    sizes = [s for s in sizes if s < limit]
    return [*sizes, limit]


def bucket_for(n: int, buckets: list[int]) -> int:
    """The smallest bucket that holds ``n`` rows."""
    i = bisect.bisect_left(buckets, n)
    if i == len(buckets):
        raise ValueError(f"a batch of {n} is larger than the largest bucket, {buckets[-1]}")
    return buckets[i]


@dataclass
class _Buffers:
    """Everything one batch bucket's pieces read and write: addresses that never change, so graphs may hold them."""

    images: Tensor  # [B, 3, H, W], fp32, the input (the policy reads it as it is)
    thresholds: Tensor  # [B, 1], fp32
    mask: Tensor  # [B, K], bool
    rows: Tensor  # [K, B], int64: per block, the rows that keep it first, then rows that do not
    valid: Tensor  # [K, B], bool: whether that entry is a row that keeps the block
    stem: Tensor  # the stem's output
    stages: list[Tensor]  # one activation per stage; a stage whose shortcut is the identity shares the one before
    logits: Tensor  # [B, classes], fp32


class _HostTables:
    """Page-locked host copies of one bucket's index table, valid flags and thresholds (on CUDA): a copy from
    them neither waits for the GPU's queue nor goes through a staging buffer of the driver's. The event marks
    when the GPU has read them, so the next batch does not overwrite them under a copy still queued."""

    def __init__(self, k: int, b: int):
        self.rows = torch.zeros(k, b, dtype=torch.int64).pin_memory()
        self.valid = torch.zeros(k, b, dtype=torch.bool).pin_memory()
        self.thresholds = torch.zeros(b, 1).pin_memory()
        self.read = torch.cuda.Event()
        self.read.record()

    def send(self, source: Tensor, host: Tensor, device: Tensor) -> None:
        host.copy_(source)
        device.copy_(host, non_blocking=True)


@dataclass
class CaptureReport:
    graphs: int = 0
    seconds: float = 0.0
    bytes: int = 0  # GPU memory the captures reserved
    skipped: int = 0  # pieces left eager because the time or memory budget ran out
    batch_buckets: list[int] = field(default_factory=list)
    signature_graphs: int = 0  # whole-backbone graphs captured at start-up (``prefill_signatures``)

    def to_dict(self) -> dict:
        return {
            "graphs": self.graphs,
            "seconds": round(self.seconds, 3),
            "bytes": self.bytes,
            "skipped": self.skipped,
            "batch_buckets": self.batch_buckets,
            "signature_graphs": self.signature_graphs,
        }


class BucketedEngine:
    """Runs a ``BlockDropModel`` (or, in ``full`` mode only, any model with ``forward`` and ``flops_table``) over
    padded, mask-independent shapes. ``infer`` has ``BlockDropModel.infer``'s contract; the logits come back on
    the model's device, masks and FLOPs on the CPU."""

    def __init__(
        self,
        model: nn.Module,
        max_batch: int,
        memory_format: torch.memory_format = torch.contiguous_format,
        signature_graphs: int = 0,
    ):
        self.model = model
        self.blockdrop = isinstance(model, BlockDropModel)
        self.backbone = model.backbone if self.blockdrop else model
        self.dtype = next(self.backbone.parameters()).dtype
        self.device = next(self.backbone.parameters()).device
        self.memory_format = memory_format
        self.buckets = bucket_sizes(max_batch)
        self.flops_table = model.flops_table
        self.num_blocks = model.num_blocks
        self.input_size: tuple[int, int] = tuple(getattr(model, "input_size", None) or model.manifest.input.size)
        self._buffers: dict[int, _Buffers] = {}
        self._host: dict[int, _HostTables] = {}
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._pool = None
        self._warmup_stream: torch.cuda.Stream | None = None
        self.capture_report = CaptureReport()
        # whole-backbone graphs, one per signature (batch bucket, each block's kind), at most signature_graphs of
        # them, admitted by how often each signature comes back (models/signatures.py; CUDA only)
        self.signatures: SignatureCache[torch.cuda.CUDAGraph] = SignatureCache(signature_graphs)
        self._captures_while_serving = self.device.type == "cuda"  # signature graphs (a test stands in on the CPU)
        self._recorded: set[tuple] | None = None  # while recording: the keys of the pieces run

    @property
    def max_batch(self) -> int:
        return self.buckets[-1]

    @property
    def graphs_in_use(self) -> bool:
        return bool(self._graphs or len(self.signatures))

    @property
    def signature_graphs(self) -> int:
        """How many whole-backbone graphs the engine may keep (0: none)."""
        return self.signatures.capacity

    @signature_graphs.setter
    def signature_graphs(self, capacity: int) -> None:
        self.signatures.resize(capacity)

    # ---- buffers -------------------------------------------------------------------------------------------------

    def buffers(self, b: int) -> _Buffers:
        if b not in self._buffers:
            self._buffers[b] = self._allocate(b)
        return self._buffers[b]

    def _zeros(self, *shape: int, dtype: torch.dtype | None = None, layout: bool = False) -> Tensor:
        x = torch.zeros(shape, dtype=dtype or self.dtype, device=self.device)
        return x.contiguous(memory_format=self.memory_format) if layout else x

    @torch.inference_mode()
    def _allocate(self, b: int) -> _Buffers:
        k = self.num_blocks
        images = self._zeros(b, 3, *self.input_size, dtype=torch.float32, layout=True)
        stem, stages = None, []
        if self.blockdrop:
            x = self.backbone.stem(images[:1].to(self.dtype))
            stem = self._zeros(b, *x.shape[1:], layout=True)
            for shortcut in self.backbone.ds:
                if isinstance(shortcut, nn.Identity):
                    stages.append(stages[-1] if stages else stem)
                else:
                    x = shortcut(x)  # a stage's blocks keep the shape its shortcut gives
                    stages.append(self._zeros(b, *x.shape[1:], layout=True))
            num_classes = self.backbone.fc.out_features
        else:
            num_classes = self.model(images[:1].to(self.dtype)).shape[1]
        return _Buffers(
            images=images,
            thresholds=self._zeros(b, 1, dtype=torch.float32),
            mask=self._zeros(b, k, dtype=torch.bool),
            rows=self._zeros(k, b, dtype=torch.int64),
            valid=self._zeros(k, b, dtype=torch.bool),
            stem=stem if stem is not None else self._zeros(1),
            stages=stages,
            logits=self._zeros(b, num_classes, dtype=torch.float32),
        )

    # ---- the pieces: each reads and writes only its bucket's buffers ------------------------------------------------

    def _policy(self, buf: _Buffers) -> None:
        buf.mask.copy_(self.model.policy(buf.images) >= buf.thresholds)

    def _full(self, buf: _Buffers) -> None:
        buf.logits.copy_(self.backbone(buf.images.to(self.dtype)))

    def _stem(self, buf: _Buffers) -> None:
        buf.stem.copy_(self.backbone.stem(buf.images.to(self.dtype)))

    def _entry(self, buf: _Buffers, stage: int) -> None:
        before = buf.stem if stage == 0 else buf.stages[stage - 1]
        buf.stages[stage].copy_(self.backbone.ds[stage](before))

    def _block(self, buf: _Buffers, stage: int, i: int, k: int, kept: int | None) -> None:
        """Block ``i`` of ``stage`` (mask column ``k``): ``kept`` None runs it on every row; the batch bucket masks
        by the mask's column; a smaller bucket gathers that many entries of the index table."""
        block = self.backbone.blocks[stage][i]
        res = buf.stages[stage]
        inp = res if i > 0 else (buf.stem if stage == 0 else buf.stages[stage - 1])
        b = res.shape[0]
        if kept is None:
            out = block(inp)
            out += res
            res.copy_(out.relu_())
        elif kept >= b:
            out = block(inp)
            out += res
            res.copy_(torch.where(buf.mask[:, k].view(b, 1, 1, 1), out.relu_(), res))
        else:
            rows, valid = buf.rows[k, :kept], buf.valid[k, :kept].view(kept, 1, 1, 1)
            gathered = gather_rows(inp, rows)
            residual = gathered if inp is res else gather_rows(res, rows)
            out = block(gathered)
            out += residual
            scatter_rows_(res, rows, torch.where(valid, out.relu_(), residual))

    def _head(self, buf: _Buffers) -> None:
        buf.logits.copy_(self.backbone.head(buf.stages[-1]))

    def _run(self, key: tuple, piece: Callable[[], None]) -> None:
        if self._recorded is not None:
            self._recorded.add(key)
        graph = self._graphs.get(key)
        if graph is not None:
            graph.replay()
        else:
            piece()

    # ---- the host's part: one wait for the mask, then queue every piece ------------------------------------------

    def kinds(self, keep_mask: Tensor, b: int) -> list[int | bool | None]:
        """Per block of host mask ``keep_mask`` [n, K] padded to ``b`` rows: ``False`` (no row keeps it: skipped),
        ``None`` (every row does: run on all), or the kept-row bucket (``b`` itself: run on all, masked)."""
        n = keep_mask.shape[0]
        kinds: list[int | bool | None] = []
        for count in keep_mask.sum(0).tolist():
            if count == 0:
                kinds.append(False)
            elif count == n:
                kinds.append(None)
            else:
                kinds.append(bucket_for(count, self.buckets) if count < b else b)
        return kinds

    def table(self, keep_mask: Tensor, b: int) -> tuple[Tensor, Tensor]:
        """The index table [K, b] of host mask ``keep_mask`` [n, K] padded to ``b`` rows: per block, the rows that
        keep it first, then the rows that do not (each part in order); and its valid flags (which are keepers)."""
        n = keep_mask.shape[0]
        columns = torch.zeros(self.num_blocks, b, dtype=torch.bool)
        columns[:, :n] = keep_mask.T
        rows = torch.argsort((~columns).to(torch.int8), dim=1, stable=True)
        valid = torch.arange(b).unsqueeze(0) < columns.sum(1).unsqueeze(1)
        return rows, valid

    @staticmethod
    def gathers(kinds: list[int | bool | None], b: int) -> bool:
        """Whether any block of these kinds gathers its rows through the index table (a kept-row bucket below
        ``b``); a batch whose blocks are all skipped, run on all rows or masked needs no table (every batch of 1)."""
        return any(kind is not None and kind is not False and kind < b for kind in kinds)

    def _host_tables(self, b: int) -> _HostTables | None:
        """The bucket's pinned host tables on CUDA (None on a CPU), once the GPU has read the last batch's."""
        if self.device.type != "cuda":
            return None
        if b not in self._host:
            self._host[b] = _HostTables(self.num_blocks, b)
        host = self._host[b]
        host.read.synchronize()  # at once in practice: the batch before waited for its mask or its logits
        return host

    def _fill(self, buf: _Buffers, host: _HostTables | None, x: Tensor, threshold: float | Tensor) -> None:
        n = x.shape[0]
        buf.images[:n].copy_(x, non_blocking=True)
        if not isinstance(threshold, Tensor):
            buf.thresholds.fill_(threshold)
        elif host is None:
            buf.thresholds[:n].copy_(threshold.view(-1, 1))
        else:
            host.send(threshold.view(-1, 1), host.thresholds[:n], buf.thresholds[:n])
            host.read.record()

    def _send_plan(self, buf: _Buffers, host: _HostTables | None, rows: Tensor, valid: Tensor) -> None:
        if host is None:
            buf.rows.copy_(rows)
            buf.valid.copy_(valid)
        else:
            host.send(rows, host.rows, buf.rows)
            host.send(valid, host.valid, buf.valid)
            host.read.record()

    @torch.inference_mode()
    def infer(
        self,
        x: Tensor,
        threshold: float | Tensor = 0.5,
        mode: Mode | str | None = None,
        keep_mask: Tensor | None = None,
    ) -> InferenceResult:
        """Logits [n, classes] (fp32, on the engine's device), keep mask and FLOPs (on the CPU) for ``x`` [n, 3, H,
        W]. ``keep_mask`` (host, [n, K]) replaces the policy's decision; ``mode`` ``full`` runs every block."""
        n = x.shape[0]
        b = bucket_for(n, self.buckets)
        buf = self.buffers(b)
        mode = Mode(mode) if mode is not None else (Mode.POLICY if getattr(self.model, "policy", None) else Mode.FULL)
        host = self._host_tables(b)
        self._fill(buf, host, x, threshold)
        if keep_mask is None and mode is Mode.FULL:
            self._run(("full", b), lambda: self._full(buf))
            mask = torch.ones(n, self.num_blocks, dtype=torch.bool)
            return InferenceResult(buf.logits[:n].clone(), mask, self.flops_table.per_image(mask, False))
        if not self.blockdrop:
            raise ValueError("only a BlockDrop model runs with a mask")
        if keep_mask is None:
            if mode is not Mode.POLICY:
                raise ValueError(f"the bucketed engine runs modes policy and full, or a given mask; not {mode.value}")
            self._run(("policy", b), lambda: self._policy(buf))
            mask = buf.mask[:n].to("cpu", copy=True)  # the one wait for the GPU in a batch
        else:
            if keep_mask.shape != (n, self.num_blocks):
                raise ValueError(f"keep_mask must be [{n}, {self.num_blocks}], got {list(keep_mask.shape)}")
            mask = keep_mask.cpu()
            buf.mask[:n].copy_(mask, non_blocking=True)
        kinds = self.kinds(mask, b)
        if self.gathers(kinds, b):  # else no piece reads the table: neither built nor sent
            self._send_plan(buf, host, *self.table(mask, b))
        if self.signature_graphs and self._captures_while_serving:
            self._backbone_by_signature(buf, b, kinds)
        else:
            self._backbone(buf, b, kinds)
        flops = self.flops_table.per_image(mask, include_policy=keep_mask is None)
        return InferenceResult(buf.logits[:n].clone(), mask, flops)

    def signature_of(self, keep_mask: Tensor) -> tuple:
        """The signature a batch with host mask ``keep_mask`` [n, K] runs under: its batch bucket and each block's
        kind (at batch 1, the mask itself: every block skipped or run)."""
        b = bucket_for(keep_mask.shape[0], self.buckets)
        return (b, tuple(self.kinds(keep_mask, b)))

    def _backbone_by_signature(self, buf: _Buffers, b: int, kinds: list[int | bool | None]) -> None:
        """The backbone as one graph for this signature if there is one; else by pieces, and then, if the cache
        wants this signature, captured whole (after answering: the capture records without running)."""
        key = (b, tuple(kinds))
        graph = self.signatures.get(key)
        if graph is not None:
            graph.replay()
            return
        self._backbone(buf, b, kinds)
        if self.signatures.wants(key):
            started = time.perf_counter()
            try:
                # thread_local: CUDA work of other threads (an explanation's policy run) does not break the capture
                graph = self._capture_one(lambda: self._backbone(buf, b, kinds, eager=True), False, "thread_local")
            except RuntimeError:  # the batch is answered already; from here on, pieces only
                log.exception("capturing a signature's backbone failed; signature graphs are off from here on")
                self.signature_graphs = 0
                return
            self.signatures.put(key, graph)
            log.debug("captured the backbone for a signature in %.1f ms", (time.perf_counter() - started) * 1e3)

    def _backbone(self, buf: _Buffers, b: int, kinds: list[int | bool | None], eager: bool = False) -> None:
        """Every piece of the backbone for these kinds (``eager``: never a piece's graph, as inside a capture)."""
        run = (lambda key, piece: piece()) if eager else self._run
        run(("stem", b), lambda: self._stem(buf))
        k = 0
        for stage, blocks in enumerate(self.backbone.blocks):
            if not isinstance(self.backbone.ds[stage], nn.Identity):
                run(("entry", b, stage), lambda s=stage: self._entry(buf, s))
            for i in range(len(blocks)):
                kind = kinds[k]
                if kind is not False:
                    run(("block", b, k, kind), lambda s=stage, i=i, k=k, p=kind: self._block(buf, s, i, k, p))
                k += 1
        run(("head", b), lambda: self._head(buf))

    # ---- CUDA graphs ---------------------------------------------------------------------------------------------

    def pieces(self, b: int, mode: Mode | str | None = None) -> list[tuple[tuple, Callable[[], None]]]:
        """The pieces of batch bucket ``b`` that ``mode`` runs (``full``: the whole network; ``policy``: the policy
        and the backbone's pieces; None: both), keyed as ``infer`` looks them up."""
        buf = self.buffers(b)
        mode = Mode(mode) if mode is not None else None
        pieces: list[tuple[tuple, Callable[[], None]]] = []
        if mode in (None, Mode.FULL):
            pieces.append((("full", b), lambda: self._full(buf)))
        if not self.blockdrop or mode is Mode.FULL:
            return pieces
        if self.model.policy is not None:
            pieces.append((("policy", b), lambda: self._policy(buf)))
        pieces.append((("stem", b), lambda: self._stem(buf)))
        kept_buckets = [None, *(p for p in self.buckets if p <= b)] if b > 1 else [None]
        k = 0
        for stage, blocks in enumerate(self.backbone.blocks):
            if not isinstance(self.backbone.ds[stage], nn.Identity):
                pieces.append((("entry", b, stage), lambda s=stage: self._entry(buf, s)))
            for i in range(len(blocks)):
                for p in kept_buckets:
                    piece = lambda s=stage, i=i, k=k, p=p: self._block(buf, s, i, k, p)  # noqa: E731
                    pieces.append((("block", b, k, p), piece))
                k += 1
        pieces.append((("head", b), lambda: self._head(buf)))
        return pieces

    def capture(
        self,
        batch_sizes: list[int] | None = None,
        budget_s: float = 60.0,
        mode: Mode | str | None = None,
        budget_bytes: int | None = None,
        keys: Collection[tuple] | None = None,
    ) -> CaptureReport:
        """Record the pieces ``mode`` runs (``pieces``) of the buckets holding ``batch_sizes`` (default: every
        bucket) in CUDA graphs, smallest bucket first, until ``budget_s`` runs out or the GPU memory reserved since
        the start passes ``budget_bytes``; the pieces left over run eagerly. ``keys`` (from ``recording``) limits
        it to those pieces: a large bucket has a piece per block and kept-row bucket, most of which a given
        stream of batches never runs. Needs a CUDA model."""
        if self.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        if batch_sizes:
            wanted = sorted({bucket_for(n, self.buckets) for n in batch_sizes})
        else:  # every key's second element is its batch bucket
            wanted = sorted({key[1] for key in keys} if keys is not None else set(self.buckets))
        report = self.capture_report
        with self._budgeted(budget_s, budget_bytes) as spent, torch.inference_mode():
            for b in wanted:
                for key, piece in self.pieces(b, mode):
                    if key in self._graphs or (keys is not None and key not in keys):
                        continue
                    if spent():
                        report.skipped += 1
                        continue
                    self._graphs[key] = self._capture_one(piece)
                    report.graphs += 1
                if b not in report.batch_buckets:
                    report.batch_buckets.append(b)
        log.info(
            "captured %d CUDA graphs for batch buckets %s in %.1f s, %.1f MiB (%d pieces left eager: over budget)",
            report.graphs,
            report.batch_buckets,
            report.seconds,
            report.bytes / 2**20,
            report.skipped,
        )
        return report

    def _capture_one(
        self, piece: Callable[[], None], warm: bool = True, error_mode: str = "global"
    ) -> torch.cuda.CUDAGraph:
        # warm up on a side stream first (cuDNN picks its algorithms outside the capture); every graph shares one
        # memory pool: pieces run one after another and keep nothing but the static buffers between them
        if warm:
            if self._warmup_stream is None:
                self._warmup_stream = torch.cuda.Stream(self.device)
            self._warmup_stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._warmup_stream):
                piece()
            torch.cuda.current_stream(self.device).wait_stream(self._warmup_stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode=error_mode):
            piece()
        self._pool = graph.pool()
        return graph

    def prefill_signatures(self, masks: Tensor, budget_s: float = 60.0, budget_bytes: int | None = None) -> int:
        """Capture the whole backbone at batch 1 for each of ``masks`` [m, K] (host; most frequent first: an
        artifact's ``frequent_masks``) while the signature cache has room and neither budget has run out, so that
        those masks replay one graph from the first request instead of being learnt, and captured, while serving.
        Returns how many it captured. Needs a CUDA model."""
        if self.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        buf = self.buffers(1)
        started = time.perf_counter()
        captured = 0
        with self._budgeted(budget_s, budget_bytes) as spent, torch.inference_mode():
            for mask in masks:
                if len(self.signatures) >= self.signature_graphs or spent():
                    break
                key = self.signature_of(mask.view(1, -1))
                if key in self.signatures:
                    continue
                piece = lambda kinds=list(key[1]): self._backbone(buf, 1, kinds, eager=True)  # noqa: E731
                graph = self._capture_one(piece, True, "thread_local")
                self.signatures.prefill(key, graph)
                captured += 1
        self.capture_report.signature_graphs += captured
        seconds = time.perf_counter() - started
        log.info("captured %d signature graphs of %d masks in %.1f s", captured, len(masks), seconds)
        return captured

    @contextmanager
    def _budgeted(self, budget_s: float, budget_bytes: int | None) -> Iterator[Callable[[], bool]]:
        """Within it, a function that says whether ``budget_s`` has passed or the GPU memory reserved since the start
        passes ``budget_bytes``; on leaving it normally, the seconds and memory it took go to the capture report."""
        started = time.perf_counter()
        reserved = torch.cuda.memory_reserved(self.device)

        def spent() -> bool:
            over_memory = budget_bytes is not None and torch.cuda.memory_reserved(self.device) - reserved > budget_bytes
            return over_memory or time.perf_counter() - started > budget_s

        yield spent  # (a capture that raises leaves the report as it was)
        torch.cuda.synchronize(self.device)
        self.capture_report.seconds += time.perf_counter() - started
        self.capture_report.bytes += torch.cuda.memory_reserved(self.device) - reserved

    @contextmanager
    def recording(self) -> Iterator[set[tuple]]:
        """Within it, the keys of the pieces that ``infer`` runs (captured or not) collect in the set it gives."""
        self._recorded = recorded = set()
        try:
            yield recorded
        finally:
            self._recorded = None

    def release_graphs(self) -> None:
        self._graphs.clear()
        self.signatures.clear()
        self._pool = None
