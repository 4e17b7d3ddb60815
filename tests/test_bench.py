"""The benchmarks run end to end on tiny inputs and write their tables (their figures are not checked here)."""

import json

from cli.main import main as blockdrop
from tests.service.conftest import make_artifacts
from tests.training.conftest import write_cifar10


def test_executor_benchmark_writes_json_and_markdown(tmp_path):
    assert (
        blockdrop(
            [
                "bench",
                "executor",
                "--depth",
                "8",
                "--batch-sizes",
                "1,4",
                "--keep",
                "0.5",
                "--min-run-time",
                "0.01",
                "--threads",
                "1",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "executor.json").read_text())
    assert [(r["batch"], r["keep_fraction"]) for r in result["rows"]] == [(1, 0.5), (4, 0.5)]
    assert "| batch |" in (tmp_path / "executor.md").read_text()


def test_variants_benchmark_writes_json_and_markdown(tmp_path):
    artifacts = make_artifacts(tmp_path / "artifacts")
    data = write_cifar10(tmp_path / "data", per_batch=16)
    args = [
        "bench",
        "variants",
        "--data-root",
        str(data),
        "--latency-images",
        "4",
        "--throughput-batches",
        "1",
        "--threads",
        "1",
        "--out",
        str(tmp_path),
        "--variant",
        f"full={artifacts['tiny-resnet']}:full",
        "--variant",
        f"blockdrop={artifacts['tiny-blockdrop']}:blockdrop",
    ]
    assert blockdrop(args) == 0
    rows = json.loads((tmp_path / "variants.json").read_text())["rows"]
    assert set(rows) == {"full", "blockdrop"} and rows["full"]["latency_speedup"] == 1.0
    assert 0 <= rows["blockdrop"]["accuracy"] <= 1
    assert blockdrop(["bench", "variants", "--variant", "broken"]) == 2
