"""The documents a newcomer reads first: the README's quickstart answers as written, and the generated results
page is what the manifests say today."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from bench.results_table import RESULTS_PAGE, page
from bench.variants import CHECKPOINTS
from tests.service.live_server import Server

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# the parts of a classification that differ from call to call
VOLATILE = ("request_id", "latency_ms")


def test_the_results_page_is_regenerated_from_the_manifests():
    assert RESULTS_PAGE.read_text() == page(CHECKPOINTS), "run `blockdrop bench results` and commit docs/results.md"


def test_the_calibration_plot_is_redrawn_from_the_manifests(tmp_path):
    from bench.calibration_plot import curves, draw

    draw(curves(CHECKPOINTS), tmp_path / "calibration.svg")
    committed = (ROOT / "docs" / "calibration.svg").read_text()
    assert committed == (tmp_path / "calibration.svg").read_text(), "run `blockdrop bench calibration-plot`, commit it"


def quickstart() -> tuple[str, dict]:
    """The README's curl call and the JSON answer printed after it."""
    text = README.read_text()
    call = next(line for line in text.splitlines() if line.startswith("curl "))
    after = text[text.index(call) :]
    answer = re.search(r"```json\n(.*?)```", after, re.DOTALL)
    assert answer, "the README shows no JSON answer after its curl call"
    return call, json.loads(answer.group(1))


def test_the_readme_names_only_commands_that_exist():
    text = README.read_text()
    targets = set(re.findall(r"^([a-z]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    assert {"serve", "test"} <= targets
    assert re.search(r"^make serve\b", text, re.MULTILINE) and re.search(r"^make test\b", text, re.MULTILINE)
    assert "../shared" not in text.split("## ", 2)[1], "the quickstart must not need a dataset beside the clone"
    assert len(text.encode()) <= 10_000


def test_the_readme_links_and_images_point_at_files():
    text = README.read_text()
    targets = re.findall(r"\]\(((?:docs|bench|service|models)/[^)#]+)", text)
    assert "docs/img/playground.png" in targets and "docs/img/experiment.png" in targets
    assert [target for target in targets if not (ROOT / target).exists()] == []


def test_the_readme_quickstart_call_gets_the_readme_answer():
    """Serve the shipped checkpoints with the default settings and run the README's curl call verbatim (on the
    test server's port); everything but the request id and the timings must be what the README shows."""
    call, shown = quickstart()
    server = Server(variants=None)
    try:
        argv = [arg.replace("http://127.0.0.1:8000", server.url) for arg in shlex.split(call)]
        answers = [json.loads(subprocess.run(argv, cwd=ROOT, capture_output=True, check=True).stdout) for _ in (1, 2)]
    finally:
        assert server.stop()
    for answer in answers:
        assert _stable(answer) == _stable(shown)
        assert answer["prediction"]["confidence"] == pytest.approx(shown["prediction"]["confidence"], abs=1e-5)
        assert set(answer["latency_ms"]) == set(shown["latency_ms"])


def _stable(answer: dict) -> dict:
    """What must match exactly: everything but the id, the timings and the confidences' last digit (another
    CPU's kernels may round the softmax differently)."""
    kept = {k: v for k, v in answer.items() if k not in VOLATILE}
    kept["prediction"] = {k: v for k, v in kept["prediction"].items() if k != "confidence"}
    kept["top_k"] = [{k: v for k, v in row.items() if k != "confidence"} for row in kept["top_k"]]
    return kept
