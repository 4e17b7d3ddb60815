"""The Dockerfile, compose file, Prometheus config and dashboard agree with each other and with the service.

No Docker engine runs here, so these check everything that can be checked without one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from compose_pydantic import ComposeSpecification

from service.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DASHBOARD = json.loads((ROOT / "docker" / "grafana" / "dashboards" / "blockdrop.json").read_text())


def dashboard_expressions() -> list[str]:
    return [target["expr"] for panel in DASHBOARD["panels"] for target in panel["targets"]]


def test_compose_file_follows_the_compose_specification():
    spec = ComposeSpecification.model_validate(COMPOSE)
    assert set(spec.services) == {"blockdrop", "prometheus", "grafana"}


def test_compose_build_context_and_mounted_files_exist():
    build = COMPOSE["services"]["blockdrop"]["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    for service in COMPOSE["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and source != "./models-extra":
                assert (ROOT / source).exists(), source


def test_service_settings_in_compose_and_dockerfile_are_real_settings():
    fields = {name.upper() for name in Settings.model_fields}
    environment = dict(COMPOSE["services"]["blockdrop"]["environment"])
    environment |= dict(re.findall(r"(BLOCKDROP_\w+)=(\S+)", DOCKERFILE))
    for key in environment:
        assert key.removeprefix(ENV_PREFIX) in fields, key
    port, grpc_port = environment["BLOCKDROP_PORT"], environment["BLOCKDROP_GRPC_PORT"]
    assert f"EXPOSE {port} {grpc_port}" in DOCKERFILE
    assert COMPOSE["services"]["blockdrop"]["ports"] == [f"{port}:{port}", f"{grpc_port}:{grpc_port}"]
    prometheus = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == [f"blockdrop:{port}"]


def test_dockerfile_copies_what_exists_and_runs_the_real_entry_point():
    for source in re.findall(r"^COPY (\S+) ", DOCKERFILE, re.MULTILINE):
        assert (ROOT / source).exists(), source
    assert 'ENTRYPOINT ["blockdrop", "serve"]' in DOCKERFILE
    assert 'blockdrop = "cli.main:main"' in (ROOT / "pyproject.toml").read_text()
    assert "/healthz/ready" in DOCKERFILE and re.search(r"^USER (?!root)", DOCKERFILE, re.MULTILINE)


def test_dashboard_covers_what_an_ab_test_needs():
    titles = " | ".join(panel["title"] for panel in DASHBOARD["panels"]).lower()
    for topic in (
        "requests per second",
        "latency",
        "flops per image",
        "flops saved",
        "blocks skipped",
        "block executions",
        "queue depth",
        "batch size",
        "shadow agreement",
        "feedback accuracy",
    ):
        assert topic in titles, topic
    assert all("variant" in expr for expr in dashboard_expressions())


def test_dashboard_names_only_metrics_the_service_exports():
    from service.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    metrics.init_variant("v", "m", "resnet", "full", None, 3)
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    exported = {family.name + suffix for family in metrics.registry.collect() for suffix in suffixes[family.type]}
    for expr in dashboard_expressions():
        for name in re.findall(r"\bblockdrop_[a-z_]+", expr):
            assert name in exported, name


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian package 'prometheus')")
def test_promtool_accepts_the_prometheus_config():
    result = subprocess.run(
        ["promtool", "check", "config", str(ROOT / "docker" / "prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
