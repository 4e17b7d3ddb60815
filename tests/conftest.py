"""Shared fixtures: small models with non-trivial BatchNorm statistics, so equivalence tests mean something."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch
from torch import nn


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


def pytest_collection_modifyitems(config, items):
    """For pytest-xdist's ``--dist loadgroup`` (``make test`` runs two workers): a module's tests stay on one
    worker, so its module fixtures (live servers, a Ray cluster) start once; everything that starts Ray or looks
    for what Ray leaves behind (tests/cluster/, the Ray benchmark) shares one worker, since two local clusters on two
    cores starve each other, and the preflight test's stale HAProxy would stop another test's `serve --ray`; the
    benchmark smoke tests, each a whole run of its own, spread one by one."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if item.get_closest_marker("ray") or module.startswith("tests/cluster/"):
            item.add_marker(pytest.mark.xdist_group("ray"))
        elif module != "tests/test_bench.py":
            item.add_marker(pytest.mark.xdist_group(module))
