"""The rollouts panel of the experiment page on a live service: a rollout of ``blockdrop`` that the controller has
moved up its steps on correct feedback, and one of ``slim`` that it rolled back on shuffled labels, each shown with
its steps, guardrails and history as ``GET /v1/rollouts`` has them. Writes ``rollouts.png`` (docs/img)."""

from __future__ import annotations

import httpx
import pytest

from tests.browser.conftest import SERVER_SETTINGS
from tests.service.live_server import Server
from tests.service.test_rollouts_e2e import AUTH, IMAGES, PLAN, TOKEN, give_feedback

pytestmark = pytest.mark.browser
MAX_ROUNDS = 400


@pytest.fixture(scope="module")
def server(browser, tmp_path_factory):
    settings = SERVER_SETTINGS | {"admin_token": TOKEN, "rollout_interval_s": 0.1}
    running = Server(None, state_dir=tmp_path_factory.mktemp("state"), **settings)
    yield running
    assert running.stop()


@pytest.fixture(scope="module")
def rollouts(server) -> dict[str, dict]:
    """blockdrop fed correct feedback until it reached 25 %; slim fed shuffled labels until rolled back."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for variant in ("blockdrop", "slim"):
            assert client.put(f"/v1/rollouts/{variant}", json=PLAN, headers=AUTH).status_code == 200
        for round_ in range(MAX_ROUNDS):
            image = round_ % len(IMAGES)
            state = {v: client.get(f"/v1/rollouts/{v}").json() for v in ("blockdrop", "slim")}
            if state["blockdrop"]["share"] >= 25 and state["slim"]["status"] == "rolled_back":
                return state
            if state["blockdrop"]["share"] < 25:
                give_feedback(client, "blockdrop", image, image)
            if state["slim"]["status"] == "running":
                give_feedback(client, "slim", image, (image + 1) % len(IMAGES))
            give_feedback(client, "full", image, image)
    raise AssertionError(f"the rollouts did not get there in {MAX_ROUNDS} rounds: {state}")


def test_the_console_shows_each_rollout_its_steps_guardrails_and_history(server, rollouts, open_page, screenshot):
    page = open_page(f"{server.url}/#experiment")
    page.wait_for_selector("#rollouts article[data-variant='slim'][data-status='rolled_back']")
    page.click("#refresh-toggle")  # hold still while it is compared
    with httpx.Client(base_url=server.url) as client:
        now = {v: client.get(f"/v1/rollouts/{v}").json() for v in ("blockdrop", "slim")}
    good = page.locator("#rollouts article[data-variant='blockdrop']")
    assert good.get_attribute("data-status") == now["blockdrop"]["status"] == "running"
    assert good.locator(".steps li").all_inner_texts() == ["1 %", "5 %", "25 %", "50 %", "100 %"]
    current = good.locator(".steps li[aria-current='step']").inner_text()
    assert current == f"{now['blockdrop']['share']:g} %"
    states = {
        row.get_attribute("data-check"): row.get_attribute("data-state") for row in good.locator("tr[data-check]").all()
    }
    assert states == {check["name"]: check["state"] for check in now["blockdrop"]["checks"]}
    actions = [item.get_attribute("data-action") for item in good.locator(".history li").all()]
    assert actions == [entry["action"] for entry in reversed(now["blockdrop"]["history"])]
    bad = page.locator("#rollouts article[data-variant='slim']")
    assert bad.locator(".status").text_content() == "rolled back"
    assert bad.locator("tr[data-check='accuracy']").get_attribute("data-state") == "violated"
    assert "accuracy violated" in bad.locator(".history li[data-action='rollback']").inner_text()
    screenshot(page, "rollouts", "#rollouts")
