"""The console's files and routes: ``/`` and its assets work offline (nothing from another origin), ship in the
package, and the sample images are listed and served."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest

from models.classes import CIFAR10_CLASSES
from service.api.console import CONSOLE
from service.api.samples import SAMPLES

ROOT = Path(__file__).resolve().parents[2]
ASSETS = sorted(path for path in CONSOLE.rglob("*") if path.is_file())


def test_the_console_page_and_every_asset_it_loads_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    linked = re.findall(r'(?:src|href)="(/console/[^"]+)"', html)
    assert "/console/js/main.js" in linked and "/console/console.css" in linked
    # every module the scripts import, relative to /console/js/
    imported = {
        f"/console/js/{name}"
        for path in CONSOLE.glob("js/*.js")
        for name in re.findall(r'from "\./([\w-]+\.js)"', path.read_text())
    }
    for url in {*linked, *imported}:
        answer = client.get(url)
        assert answer.status_code == 200, url
        expected = "text/css" if url.endswith(".css") else "javascript"
        assert expected in answer.headers["content-type"], url
    assert {f"/console/{path.relative_to(CONSOLE)}" for path in ASSETS} == {*linked, *imported, "/console/index.html"}


@pytest.mark.parametrize("asset", ASSETS, ids=lambda path: str(path.relative_to(CONSOLE)))
def test_the_console_needs_nothing_from_another_origin(asset):
    text = asset.read_text()
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", text), "a file from another origin would not load offline"
    assert not re.search(r"""(?:fetch|import)\(\s*["'`](?:https?:)?//""", text)
    assert "@import url(http" not in text


def test_the_console_files_ship_in_the_package():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["service"]
    service = ROOT / "service"
    for path in [*ASSETS, *SAMPLES.glob("*.png")]:
        relative = str(path.relative_to(service))
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative


def test_the_samples_are_listed_and_served(client):
    samples = client.get("/v1/samples").json()["samples"]
    assert sorted(s["label"] for s in samples) == sorted(CIFAR10_CLASSES)
    cat = next(s for s in samples if s["label"] == "cat")
    assert cat == {"name": "cat.png", "label": "cat", "url": "/v1/samples/cat.png"}
    image = client.get(cat["url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == (SAMPLES / "cat.png").read_bytes()


@pytest.mark.parametrize("name", ["dinosaur.png", "README.md", "cat", "cat.PNG"])
def test_an_unknown_sample_is_a_404(client, name):
    answer = client.get(f"/v1/samples/{name}")
    assert answer.status_code == 404 and "GET /v1/samples" in answer.json()["error"]


def test_no_path_leads_out_of_the_samples(client):
    for url in ["/v1/samples/..%2Fapp.py", "/v1/samples/%2E%2E%2Fapp.py", "/console/..%2Fapp.py", "/console/../app.py"]:
        answer = client.get(url)
        assert answer.status_code == 404 and "error" in answer.json(), url


def test_an_unknown_asset_is_a_json_404(client):
    answer = client.get("/console/js/nothing.js")
    assert answer.status_code == 404 and answer.json() == {
        "error": "nothing at GET /console/js/nothing.js; the API is described at /docs"
    }


def test_the_models_list_the_stage_layout(client):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["blockdrop"]["stages"] == [1, 1, 1] and models["full"]["stages"] == [1, 1, 1]
