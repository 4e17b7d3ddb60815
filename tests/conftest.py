"""Shared fixtures: small models with non-trivial BatchNorm statistics, so equivalence tests mean something."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True, scope="session")
def state_of_this_run(tmp_path_factory):
    """Apps and servers under test keep their state (the rollouts' store: its outcome is restored at start) in a
    folder of this run, never in the user's ``~/.local/state/blockdrop``; servers started as processes inherit it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("xdg-state")))
        yield


def eventually(condition: Callable[[], object], seconds: float = 10.0) -> bool:
    """Whether ``condition`` holds within ``seconds`` (asked every 50 ms, and once more at the end)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random affine parameters and running statistics (defaults would hide bugs)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = torch.rand(n, generator=generator) * 0.4 + 0.2
            module.bias.data = torch.randn(n, generator=generator) * 0.1
            module.running_mean = torch.randn(n, generator=generator) * 0.1
            module.running_var = torch.rand(n, generator=generator) + 1.0
    return model.eval()


def work_unit(nodeid: str) -> str:
    """The tests that run together on one pytest-xdist worker (``make test`` runs two): a module's, so its module
    fixtures (live servers, a Ray cluster) start once; everything that starts Ray or looks for what Ray leaves
    behind (tests/cluster/, and any ``test_ray_*`` elsewhere: the Ray benchmark's) in one unit, since two local
    clusters on two cores starve each other and the preflight test's stale HAProxy would stop another test's
    `serve --ray`; each benchmark smoke test, a whole run of its own, alone."""
    module, _, name = nodeid.partition("::")
    if module.startswith("tests/cluster/") or name.startswith("test_ray_"):
        return "ray"
    return nodeid if module == "tests/test_bench.py" else module


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's, called only where it runs the suite
def pytest_xdist_make_scheduler(config, log):
    """xdist's scheduling by scope, the scopes being ``work_unit``'s (xdist's own ``--dist loadgroup`` reads
    groups from markers into node ids, which pytest 9 no longer lets a plugin change: it ran every test alone)."""
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return WorkUnitScheduling(config, log)
