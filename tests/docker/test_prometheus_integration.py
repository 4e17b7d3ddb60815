"""A real Prometheus server (Debian's package) scraping a live service with the project's own config; the
dashboard's PromQL, asked through Prometheus's HTTP API, returns what the known traffic implies."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import time

import httpx
import pytest

from service.libc import signal_when_parent_ends
from tests.docker.test_deployment_files import ROOT, dashboard_expressions
from tests.service.conftest import make_artifacts, png_bytes
from tests.service.live_server import Server, free_port

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="needs a Prometheus server (Debian package 'prometheus')"
)
WINDOW = "10m"  # covers the whole test, so rates over it compare the totals


def query(prometheus: str, expr: str) -> list[dict]:
    body = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}).json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def by_variant(result: list[dict]) -> dict[str, float]:
    return {series["metric"].get("variant", ""): float(series["value"][1]) for series in result}


def panel_expr(title_fragment: str) -> str:
    exprs = [expr for expr in dashboard_expressions() if title_fragment in expr]
    assert exprs, title_fragment
    return exprs[0].replace("$__rate_interval", WINDOW).replace("$variant", ".*")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prometheus")
    artifacts = make_artifacts(tmp / "artifacts")
    server = Server(
        [
            {"name": "blockdrop", "artifact": str(artifacts["tiny-blockdrop"]), "mode": "blockdrop"},
            {"name": "full", "artifact": str(artifacts["tiny-resnet"]), "mode": "full"},
        ]
    )
    config = (ROOT / "docker" / "prometheus.yml").read_text()
    config = config.replace("blockdrop:8000", f"127.0.0.1:{server.port}").replace("5s", "1s")
    (tmp / "prometheus.yml").write_text(config)
    port = free_port()
    prometheus = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=signal_when_parent_ends(),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_scrapes(url, 2)
        yield server, url
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
        server.stop()


def _wait_for_scrapes(url: str, count: int, timeout: float = 60) -> None:
    """Wait until Prometheus has scraped the service ``count`` more times."""
    deadline = time.monotonic() + timeout
    start = None
    while time.monotonic() < deadline:
        try:
            up = query(url, f'sum_over_time(up{{job="blockdrop"}}[{WINDOW}])')  # successful scrapes so far
            if up:
                scrapes = float(up[0]["value"][1])
                start = scrapes if start is None else start
                if scrapes - start >= count:
                    return
        except (httpx.HTTPError, ValueError):
            pass  # not listening yet, or still starting: it answers 503 "Service Unavailable" in plain text
        time.sleep(0.25)
    raise TimeoutError("Prometheus did not scrape the service")


def test_dashboard_queries_return_what_the_traffic_implies(stack):
    server, prometheus = stack
    served = {"blockdrop": [], "full": []}
    for variant, count in (("blockdrop", 12), ("full", 5)):
        for seed in range(count):
            response = httpx.post(
                f"{server.url}/v1/classify?variant={variant}",
                content=png_bytes(seed=seed),
                headers={"content-type": "image/png"},
            )
            served[variant].append(response.json())
    _wait_for_scrapes(prometheus, 3)

    mean_flops = by_variant(
        query(
            prometheus,
            panel_expr("blockdrop_executed_flops_total")
            and panel_expr("/ sum by (variant) (rate(blockdrop_images_total"),
        )
    )
    saved = by_variant(query(prometheus, panel_expr("1 - sum by (variant) (rate(blockdrop_executed_flops_total")))
    for variant, bodies in served.items():
        executed = sum(b["flops"]["executed"] for b in bodies)
        full = sum(b["flops"]["full"] for b in bodies)
        assert mean_flops[variant] == pytest.approx(executed / len(bodies), rel=1e-9)
        assert saved[variant] == pytest.approx(1 - executed / full, abs=1e-9)
    assert saved["full"] == pytest.approx(0.0, abs=1e-12)  # (the tiny policy costs more than it saves)

    flops_rate = by_variant(query(prometheus, panel_expr("sum by (variant) (rate(blockdrop_executed_flops_total")))
    assert flops_rate["blockdrop"] > 0 and flops_rate["full"] > 0

    p95 = query(prometheus, panel_expr("histogram_quantile(0.95"))
    metrics_text = httpx.get(f"{server.url}/metrics").text
    for series in p95:
        variant = series["metric"]["variant"]
        expected = histogram_quantile(0.95, buckets(metrics_text, "blockdrop_request_latency_seconds", variant))
        assert float(series["value"][1]) == pytest.approx(expected, rel=1e-6)


def test_every_dashboard_expression_parses_in_prometheus(stack):
    _, prometheus = stack
    for expr in dashboard_expressions():
        expr = expr.replace("$__rate_interval", "1m").replace("$variant", ".*")
        query(prometheus, expr)  # asserts status success; a parse error is a 400 with status "error"


def buckets(metrics_text: str, name: str, variant: str) -> list[tuple[float, float]]:
    pattern = re.compile(rf'{name}_bucket\{{le="([^"]+)",variant="{variant}"\}} (\S+)')
    return [(float(le), float(count)) for le, count in pattern.findall(metrics_text)]


def histogram_quantile(q: float, cumulative: list[tuple[float, float]]) -> float:
    """Prometheus's interpolation over cumulative buckets (from a zero start, rates are proportional to counts)."""
    cumulative = sorted(cumulative)
    total = cumulative[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return math.nan
