"""The playground against the shipped checkpoints: a sample, a chosen file and a dropped file each show the
label and the network that ``/v1/classify`` gives for the same image and variant, with the policy's
keep-probabilities from ``/v1/explain``; and all of it works from the keyboard alone."""

from __future__ import annotations

import json
import shutil
import time

import httpx
import pytest

from service.api.samples import SAMPLES
from tests.browser.conftest import SERVER_SETTINGS
from tests.service.live_server import Server

pytestmark = pytest.mark.browser

VARIANTS = ["blockdrop", "full", "slim", "slim-blockdrop", "biglittle"]
POLICY_VARIANTS = {"blockdrop", "slim-blockdrop"}


@pytest.fixture(scope="module")
def server(browser):
    running = Server(None, **SERVER_SETTINGS)
    yield running
    assert running.stop()


def post_sample(server, route: str, sample: str, **params: str) -> dict:
    body = (SAMPLES / sample).read_bytes()
    response = httpx.post(f"{server.url}{route}", params=params, content=body, headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    return response.json()


def classify(server, sample: str, variant: str, budget: str | None = None) -> dict:
    return post_sample(server, "/v1/classify", sample, variant=variant, **({"budget": budget} if budget else {}))


def explain(server, sample: str, variant: str) -> dict:
    return post_sample(server, "/v1/explain", sample, variant=variant)


def wait_for_run(page, runs: int) -> None:
    page.wait_for_selector(f"#results[data-runs='{runs}'][aria-busy='false']")


def drawn(page, variant: str) -> dict:
    """What a result card shows: the label, and per drawn block whether it ran and its probability bar."""
    card = page.locator(f"article.result[data-variant='{variant}']")
    blocks = card.locator("svg.network g.block")
    return {
        "label": card.locator("[data-field=label]").inner_text(),
        "mask": "".join(blocks.nth(i).get_attribute("data-executed") for i in range(blocks.count())),
        "probabilities": [
            float(bar.get_attribute("data-probability")) for bar in card.locator("svg.network rect.prob").all()
        ],
        "compute": card.locator("[data-field=compute]").inner_text(),
    }


def assert_cards_match_the_service(page, server, sample: str, label: str) -> None:
    for variant in VARIANTS:
        shown, answer = drawn(page, variant), classify(server, sample, variant)
        assert shown["label"] == answer["prediction"]["label"] == label, variant
        assert shown["mask"] == answer["blocks"]["mask"], variant
        if variant in POLICY_VARIANTS:
            explanation = explain(server, sample, variant)
            assert shown["probabilities"] == pytest.approx(explanation["keep_probabilities"], abs=1e-6)
            assert explanation["mask"] == answer["blocks"]["mask"]
        else:
            assert shown["probabilities"] == []


def test_a_sample_shows_its_label_and_the_blocks_each_variant_ran(server, open_page, screenshot):
    page = open_page(server.url)
    assert page.locator(".sample").count() == 10
    page.click("button[data-sample='cat.png']")
    wait_for_run(page, 1)
    assert page.locator("article.result").count() == len(VARIANTS)
    assert_cards_match_the_service(page, server, "cat.png", "cat")
    blockdrop = page.locator("article.result[data-variant='blockdrop']")
    assert "threshold 0.575" in blockdrop.locator("[data-field=compute]").inner_text()
    assert blockdrop.locator("svg.network line.threshold").count() == 1
    screenshot(page, "playground")


def test_a_chosen_file_and_a_dropped_file_are_classified(server, open_page, tmp_path):
    upload = tmp_path / "my-photo.png"
    shutil.copy(SAMPLES / "ship.png", upload)
    page = open_page(server.url)
    page.set_input_files("#upload", str(upload))
    wait_for_run(page, 1)
    assert "my-photo.png" in page.inner_text("#chosen")
    assert_cards_match_the_service(page, server, "ship.png", "ship")
    page.evaluate(
        """async () => {
            const blob = await (await fetch("/v1/samples/frog.png")).blob();
            const transfer = new DataTransfer();
            transfer.items.add(new File([blob], "dropped.png", { type: "image/png" }));
            document.getElementById("playground").dispatchEvent(
                new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }"""
    )
    wait_for_run(page, 2)
    assert_cards_match_the_service(page, server, "frog.png", "frog")


def focused(page) -> str:
    return page.evaluate(
        """() => {
            const e = document.activeElement;
            return e.dataset.sample || e.id || e.textContent.trim();
        }"""
    )


def tab_to(page, target: str, key: str = "Tab") -> None:
    """Press ``key`` until ``target`` has the focus (the way a keyboard user gets there)."""
    for _ in range(30):
        page.keyboard.press(key)
        if focused(page) == target:
            return
    raise AssertionError(f"{key} never reached {target!r}")


def test_a_request_shed_with_retry_after_is_sent_again_after_the_wait_it_asks(server, open_page):
    """The service sheds load with 503 + Retry-After (here: the first two classifies for `full`, made so by the
    browser); the console waits as asked and sends it again, and the card shows the answer, not the refusal."""
    refusals: list[float] = []

    def shed_twice(route):
        if len(refusals) < 2:
            refusals.append(time.monotonic())
            body = json.dumps({"error": "the service is overloaded; retry after 1 s"})
            route.fulfill(status=503, headers={"Retry-After": "1"}, content_type="application/json", body=body)
        else:
            route.continue_()

    page = open_page(server.url, expected_errors=("status of 503",))
    page.route("**/v1/classify?variant=full*", shed_twice)
    started = time.monotonic()
    page.click("button[data-sample='cat.png']")
    wait_for_run(page, 1)
    assert len(refusals) == 2 and refusals[1] - refusals[0] >= 0.9 and time.monotonic() - started >= 1.9
    assert drawn(page, "full")["label"] == "cat"


def test_a_request_still_shed_after_the_retries_shows_the_refusal(server, open_page):
    page = open_page(server.url, expected_errors=("status of 503",))
    body = json.dumps({"error": "the service is overloaded; retry after 0 s"})
    refused = {"status": 503, "headers": {"Retry-After": "0"}, "content_type": "application/json", "body": body}
    page.route("**/v1/classify?variant=full*", lambda route: route.fulfill(**refused))
    page.click("button[data-sample='cat.png']")
    wait_for_run(page, 1)
    card = page.locator("article.result[data-variant='full']")
    assert card.locator("[role=alert]").inner_text() == "503: the service is overloaded; retry after 0 s"


def test_the_playground_works_from_the_keyboard_alone(server, open_page):
    page = open_page(server.url)
    order = []
    while not order or order[-1] != "budget":
        assert len(order) < 25, order
        page.keyboard.press("Tab")
        order.append(focused(page))
    samples = sorted(path.name for path in SAMPLES.glob("*.png"))
    # a label for every control, in reading order (the Classify button is disabled until an image is chosen)
    assert order == [
        "nav-playground",
        "nav-experiment",
        "API docs",
        *samples,
        "upload",
        *[f"variant-{name}" for name in VARIANTS],
        "budget",
    ]
    for control in ["upload", "budget", *[f"variant-{name}" for name in VARIANTS]]:
        assert page.locator(f"label[for='{control}']").count() == 1
    # back to the deer sample, and Enter chooses it: it runs at once
    tab_to(page, "deer.png", "Shift+Tab")
    page.keyboard.press("Enter")
    wait_for_run(page, 1)
    assert page.get_attribute("button[data-sample='deer.png']", "aria-pressed") == "true"
    assert drawn(page, "full")["label"] == classify(server, "deer.png", "full")["prediction"]["label"]
    # leave biglittle out with Space, pick the "balanced" budget with the arrow keys, run with Space on the button
    tab_to(page, "variant-biglittle")
    page.keyboard.press("Space")
    assert not page.is_checked("#variant-biglittle")
    page.keyboard.press("Tab")
    assert focused(page) == "budget"
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    assert page.input_value("#budget") == "balanced"
    page.keyboard.press("Tab")
    assert focused(page) == "run"
    page.keyboard.press("Space")
    wait_for_run(page, 2)
    shown = [card.get_attribute("data-variant") for card in page.locator("article.result").all()]
    assert shown == [name for name in VARIANTS if name != "biglittle"]
    for variant in POLICY_VARIANTS:
        answer = classify(server, "deer.png", variant, budget="balanced")
        assert answer["compute"]["budget"] == 0.75
        assert drawn(page, variant)["mask"] == answer["blocks"]["mask"]
        assert f"threshold {answer['compute']['threshold']:g}" in drawn(page, variant)["compute"]
        assert "budget 0.75" in drawn(page, variant)["compute"]
