"""The data plane's backend when the models run on this machine, beside the API (``service.app.Backend``): each
variant's micro-batcher, over the variant's worker processes (``inference_workers = "process"``, ``worker_replicas``
of them) or over the model loaded in this process (``"thread"``), and the store of predictions awaiting feedback.

The backend owns the worker processes (launched together, waited for, stopped last) and warms up the models that
run in this process; its executors say whether their variant answers."""

from __future__ import annotations

import torch
from anyio import to_thread

from service.batching import MicroBatcher
from service.config import Settings
from service.dataplane import DataPlane, Executor
from service.feedback import PredictionStore
from service.fork_server import WORKER_MODULES, start_fork_server
from service.metrics import ServiceMetrics
from service.variants import ExecutionOptions, Variant
from service.worker import InferenceWorker, WorkerSpec

# A batch a worker has not answered in this long, at the least, although its heartbeat runs, is taken as hung. Not
# the request deadline alone: a deadline shorter than a batch (REQUEST_TIMEOUT_S=0.003) gets the request its 504,
# but must not get every worker killed and started again.
MIN_ANSWER_TIMEOUT_S = 10.0


class LocalExecutor(MicroBatcher):
    """A variant's micro-batcher and the worker processes it feeds (none: the model runs in this process)."""

    def __init__(self, *args, workers: list[InferenceWorker], **kwargs):
        super().__init__(*args, **kwargs)
        self.workers = workers

    @property
    def alive(self) -> bool:
        """Readiness: every worker of the variant answers (no workers: the model is here, and answers)."""
        return all(worker.alive for worker in self.workers)

    @property
    def answering(self) -> bool:
        """Routing and admission: one worker of the variant answers, or the model runs in this process."""
        return any(worker.alive for worker in self.workers) if self.workers else True

    @property
    def graphs_in_use(self) -> bool | None:
        """Whether the variant's workers run CUDA graphs, as each reported when it became ready (every one that has
        must: a worker whose capture failed runs without); None with no worker reporting (the model runs here)."""
        reported = [worker.cuda_graphs for worker in self.workers if worker.cuda_graphs is not None]
        return all(reported) if reported else None


class LocalBackend:
    names_its_servers = False  # X-Served-By: the process that serves, read by the app

    def __init__(self, settings: Settings, metrics: ServiceMetrics | None = None):
        self.settings = settings
        self.metrics = metrics or ServiceMetrics()
        self.store = PredictionStore(settings.feedback_capacity, settings.feedback_ttl_s)
        self.workers: dict[str, list[InferenceWorker]] = {}
        self.variants: dict[str, Variant] = {}

    @property
    def runs_models_here(self) -> bool:
        """Whether the variants loaded in this process serve (so they capture their CUDA graphs) rather than only
        describe the variants for worker processes."""
        return self.settings.inference_workers == "thread"

    def executors(self, variants: dict[str, Variant]) -> dict[str, Executor]:
        self.variants = variants
        replicas = self.settings.worker_replicas if self.settings.inference_workers == "process" else 0
        self.workers = {name: [self._worker(v, i) for i in range(replicas)] for name, v in variants.items()}
        return {name: self._executor(variant) for name, variant in variants.items()}

    def _worker(self, variant: Variant, replica: int) -> InferenceWorker:
        s = self.settings
        spec = WorkerSpec(
            settings=next(v for v in s.variants if v.name == variant.name),
            device=variant.device,
            torch_threads=s.torch_threads or 1,
            fold_batchnorm=s.fold_batchnorm,
            max_batch_size=s.max_batch_size,
            input_shape=(3, variant.manifest.input.height, variant.manifest.input.width),
            num_classes=len(variant.manifest.classes),
            num_blocks=variant.num_blocks,
            execution=ExecutionOptions.from_settings(s),
        )
        restarts = self.metrics.worker_restarts.labels(variant.name)
        worker = InferenceWorker(
            spec,
            max(s.request_timeout_s, MIN_ANSWER_TIMEOUT_S),
            on_restart=restarts.inc,
            heartbeat_timeout_s=s.worker_heartbeat_timeout_s,
        )
        if replica == 0:  # the variant's series: how many of its replicas answer
            name = variant.name
            gauge = self.metrics.worker_up.labels(name)
            gauge.set_function(lambda: float(sum(w.alive for w in self.workers.get(name, []))))
        return worker

    def _executor(self, variant: Variant) -> LocalExecutor:
        s = self.settings
        replicas = self.workers[variant.name]
        return LocalExecutor(
            variant.name,
            [worker.infer for worker in replicas] if replicas else variant.infer,
            s.max_batch_size,
            s.max_batch_wait_ms / 1000,
            s.queue_limit,
            s.retry_after_s,
            on_batch=lambda result, seconds: self.metrics.observe_batch(
                variant.name, result, seconds, variant.full_flops
            ),
            wait_budget_s=s.queue_wait_budget_ms / 1000,
            replica_ready=[lambda w=worker: w.alive for worker in replicas] if replicas else None,
            workers=replicas,
        )

    # lifecycle (the app's lifespan: workers loaded and warm before serving, stopped after the data plane) -------
    def prepare(self) -> None:
        """Before the variants load here: start the fork server the workers will be forked from, so that its
        imports overlap the loading (service/fork_server.py)."""
        if self.settings.inference_workers == "process":
            start_fork_server(WORKER_MODULES)

    def start_workers(self) -> None:
        """Start every variant's worker process, all loading at once, and wait for each (they warm themselves up)."""
        workers = [worker for replicas in self.workers.values() for worker in replicas]
        for worker in workers:
            worker.launch()
        for worker in workers:
            worker.wait_ready()

    def warm_up(self) -> None:
        """Run every variant that runs in this process once per batch size it will see most, so the first requests
        are not slow (worker processes have done so as they started)."""
        if any(self.workers.values()):
            return
        for variant in self.variants.values():
            spec = variant.manifest.input
            for n in sorted({1, self.settings.max_batch_size}):
                variant.infer(torch.zeros(n, 3, spec.height, spec.width))

    async def stop_workers(self) -> None:
        for replicas in self.workers.values():
            for worker in replicas:
                await to_thread.run_sync(worker.stop)

    async def run(self, plane: DataPlane) -> None:
        """Nothing runs in the background: a single process shares nothing with other servers."""
