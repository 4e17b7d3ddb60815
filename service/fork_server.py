"""How the service starts its own processes (inference workers, model servers, API servers): forked from a fork
server, each holding a lifeline to the service.

Python's fork server is a process started once like ``spawn`` starts one (a fresh interpreter: none of the
service's threads, no CUDA context), which imports the modules it is given and then forks a child for each start.
A start is then a fork, not a new interpreter importing torch (most of a worker's start-up, and of its replacement
after a crash: ``blockdrop bench startup``, docs/benchmarks.md). Forking that process is safe where forking the
service is not: it holds no lock of the service's threads and never touched CUDA. It keeps the environment and
working folder the service had when the first child started.

A child's parent is then the fork server, not the service, and the fork server runs until its last child has
ended; so a child cannot watch its parent to learn that the service is gone. It watches a *lifeline* instead: the
read end of a pipe whose write end only the service holds, which reads end-of-file once the service has ended,
however it ended (SIGKILL included). The children end, then the fork server.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext

# torch._dynamo: torch imports it on a process's first FlopCounterMode convolution (models/flops.py, as a variant
# loads), most of that first load's time; imported once here, no child pays for it again
WORKER_MODULES = ("torch", "torch._dynamo", "service.worker")
SERVER_MODULES = (
    "torch",
    "torch._dynamo",
    "service.multiprocess.model_server",
    "service.multiprocess.api_server",
    "service.multiprocess.backend",
    "service.app",
)


def fork_server_context(preload: tuple[str, ...]) -> BaseContext:
    """The context to start children with; the fork server imports the ``preload`` modules when it starts, with the
    first child or ``start_fork_server`` (a later call's ``preload`` is ignored once it runs)."""
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    return context


def start_fork_server(preload: tuple[str, ...]) -> None:
    """Start the fork server now, without waiting for its imports: they overlap what this process does before its
    first child (loading the variants' descriptions). Its environment is this process's as it is now."""
    fork_server_context(preload)
    forkserver.ensure_running()


class Lifeline:
    """Made by the service, once: ``end`` goes to each child (in its arguments), the write end stays here and is
    never written to."""

    def __init__(self, context: BaseContext) -> None:
        self.end, self._held = context.Pipe(duplex=False)


def service_gone(end: Connection) -> bool:
    """In a child: whether the service that gave it ``end`` has ended (nothing is ever sent: readable means EOF)."""
    return end.poll()
