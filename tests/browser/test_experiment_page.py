"""The experiment page after known traffic: sticky client keys over the shipped variants (each shadowed by
``full``), feedback whose right and wrong answers are chosen per variant, and a few errors. ``/v1/experiment``
must count exactly that, and the page must show what ``/v1/experiment`` says, refreshing on its own."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict

import httpx
import pytest

from service.api.samples import SAMPLES
from service.stats import two_proportion_z_test, wilson_interval
from tests.browser.conftest import SERVER_SETTINGS
from tests.service.live_server import Server

pytestmark = pytest.mark.browser

VARIANTS = ["blockdrop", "full", "slim", "slim-blockdrop", "biglittle"]
REQUESTS = 100
# every n-th answer of a variant gets a wrong label in its feedback, the others the predicted one
WRONG_EVERY = {"blockdrop": 3, "full": 8, "slim": 4, "slim-blockdrop": 2, "biglittle": 5}
BAD_IMAGES = 2  # sent to slim: counted there as errors (415)


@pytest.fixture(scope="module")
def server(browser):
    running = Server(None, shadow_variant="full", shadow_fraction=1.0, **SERVER_SETTINGS)
    yield running
    assert running.stop()


@pytest.fixture(scope="module")
def traffic(server) -> dict:
    """Send the known traffic and feedback; what was sent, per variant."""
    samples = sorted(SAMPLES.glob("*.png"))
    answers: dict[str, list[dict]] = defaultdict(list)
    correct: dict[str, list[bool]] = defaultdict(list)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for i in range(REQUESTS):
            response = client.post(
                "/v1/classify",
                content=samples[i % len(samples)].read_bytes(),
                headers={"content-type": "image/png", "x-client-id": f"user-{i}"},
            )
            assert response.status_code == 200, response.text
            answer = response.json()
            variant = answer["variant"]
            wrong = len(answers[variant]) % WRONG_EVERY[variant] == 0
            predicted = answer["prediction"]["class_id"]
            label = (predicted + 1) % 10 if wrong else predicted
            given = client.post("/v1/feedback", json={"request_id": answer["request_id"], "label": label}).json()
            assert given["correct"] is not wrong
            answers[variant].append(answer)
            correct[variant].append(not wrong)
        for _ in range(BAD_IMAGES):
            bad = client.post(
                "/v1/classify?variant=slim", content=b"not an image", headers={"content-type": "image/png"}
            )
            assert bad.status_code == 415
        assert client.post("/v1/classify?variant=nope", content=b"x").status_code == 404
        wait_for_shadows(client, {name: len(answers[name]) for name in VARIANTS if name != "full"})
    return {"answers": answers, "correct": correct}


def wait_for_shadows(client: httpx.Client, expected: dict[str, int], timeout: float = 30) -> None:
    """Shadow runs finish after their answers: wait until every one is counted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = client.get("/v1/experiment").json()
        done = {
            v["name"]: sum(s["agree"] + s["disagree"] + s["skipped"] for s in v["shadow"]) for v in report["variants"]
        }
        if all(done.get(name) == count for name, count in expected.items()):
            return
        time.sleep(0.1)
    raise TimeoutError(f"shadow comparisons never reached {expected}")


def report_of(server, **params) -> dict:
    return httpx.get(f"{server.url}/v1/experiment", params=params).json()


def test_the_report_counts_exactly_the_traffic_sent(server, traffic):
    report = report_of(server)
    answers, correct = traffic["answers"], traffic["correct"]
    assert report["baseline"] == "full"
    assert report["requests"]["routed"] == REQUESTS + BAD_IMAGES
    assert report["requests"]["unrouted"] == 1
    by_name = {v["name"]: v for v in report["variants"]}
    assert list(by_name) == VARIANTS
    full_network = by_name["full"]["flops"]["network"]
    shadowed = sum(len(answers[name]) for name in VARIANTS if name != "full")
    for name, variant in by_name.items():
        sent = answers[name]
        errors = BAD_IMAGES if name == "slim" else 0
        assert len(sent) > 0, f"no client key landed on {name}"
        assert variant["requests"]["total"] == len(sent) + errors
        assert variant["requests"]["errors"] == errors
        assert variant["traffic"]["configured"] == pytest.approx(0.2)
        assert variant["traffic"]["observed"] == pytest.approx((len(sent) + errors) / (REQUESTS + BAD_IMAGES))
        assert variant["latency_s"]["count"] == len(sent) + errors
        # images, FLOPs and blocks count every image the variant ran: full also ran the others' as their shadow
        ran = [a["blocks"] | a["flops"] for a in sent]
        if name == "full":
            ran += [{"mask": "1" * len(sent[0]["blocks"]["mask"]), "skipped": 0} | sent[0]["flops"]] * shadowed
        assert variant["images"] == len(ran)
        executed = sum(r["executed"] for r in ran)
        assert variant["flops"]["mean"] == pytest.approx(executed / len(ran))
        assert variant["flops"]["saved_vs_baseline"] == pytest.approx(1 - executed / len(ran) / full_network)
        masks = [r["mask"] for r in ran]
        assert variant["block_executions"]["counts"] == [sum(m[b] == "1" for m in masks) for b in range(len(masks[0]))]
        skipped = Counter(r["skipped"] for r in ran)
        assert {b["le"]: b["count"] for b in variant["skipped_blocks"]["buckets"] if b["count"]} == skipped
        right = sum(correct[name])
        feedback = variant["feedback"]
        assert (feedback["right"], feedback["wrong"]) == (right, len(sent) - right)
        low, high = wilson_interval(right, len(sent))
        assert (feedback["interval"]["low"], feedback["interval"]["high"]) == pytest.approx((low, high))
        if name == "full":
            assert feedback["fixed_horizon"] is None
            assert variant["shadow"] == []
        else:
            test = two_proportion_z_test(right, len(sent), sum(correct["full"]), len(answers["full"]))
            assert feedback["fixed_horizon"]["p_value"] == pytest.approx(test.p_value)
            [shadow] = variant["shadow"]
            assert shadow["shadow"] == "full" and shadow["agree"] + shadow["disagree"] == len(sent)


def cells(page) -> dict[str, dict[str, tuple[object, str]]]:
    """The experiment table as shown: per variant, per field, the value it was drawn from and its text."""
    table = {}
    for row in page.locator("#experiment-table tbody tr").all():
        table[row.get_attribute("data-variant")] = {
            cell.get_attribute("data-field"): (json.loads(cell.get_attribute("data-value")), cell.inner_text())
            for cell in row.locator("td").all()
        }
    return table


def field(variant: dict, path: str):
    for key in path.split("."):
        variant = None if variant is None else variant[key]
    return variant


def percent(x: float) -> str:
    return f"{x * 100:.1f} %"


# fields that do not change while no traffic comes in (requests/s does)
STEADY = [
    "traffic.configured",
    "traffic.observed",
    "requests.total",
    "requests.errors",
    "latency_s.p50",
    "latency_s.p95",
    "flops.mean",
    "flops.saved",
    "flops.saved_vs_baseline",
    "feedback.right",
    "feedback.accuracy",
    "feedback.fixed_horizon.difference",
    "feedback.fixed_horizon.p_value",
]


def test_the_page_shows_what_the_report_says_and_refreshes(server, traffic, open_page, screenshot):
    page = open_page(f"{server.url}/#experiment")
    page.wait_for_selector("#experiment[data-renders]")
    renders = int(page.get_attribute("#experiment", "data-renders"))
    page.wait_for_selector(f"#experiment[data-renders='{renders + 1}']", timeout=10_000)  # on its own
    page.click("#refresh-toggle")  # hold still while the figures are compared
    assert page.get_attribute("#refresh-toggle", "aria-pressed") == "true"
    shown, report = cells(page), report_of(server)
    assert list(shown) == VARIANTS
    assert page.input_value("#baseline") == report["baseline"]  # the server's default, shown as chosen
    for variant in report["variants"]:
        row = shown[variant["name"]]
        for path in STEADY:
            assert row[path][0] == pytest.approx(field(variant, path)), (variant["name"], path)
        assert row["requests.total"][1] == str(int(variant["requests"]["total"]))
        assert row["feedback.right"][1] == f"{variant['feedback']['right']:.0f} / {variant['feedback']['n']:.0f}"
        interval = variant["feedback"]["interval"]
        assert row["feedback.accuracy"][1] == (
            f"{percent(variant['feedback']['accuracy'])} ({interval['low'] * 100:.1f}–{interval['high'] * 100:.1f})"
        )
        assert row["requests.per_second"][0] is not None  # a rate from the second refresh on
        test = variant["feedback"]["fixed_horizon"]
        if test is not None and test["p_value"] >= 0.001:
            assert row["feedback.fixed_horizon.p_value"][1].startswith(f"{test['p_value']:.3f}")
        always_valid = variant["always_valid"]
        if always_valid is None:
            assert row["always_valid.accuracy.decision"] == (None, "—")
        else:
            accuracy = always_valid["accuracy"]
            assert row["always_valid.accuracy.decision"] == (accuracy["decision"], accuracy["decision"])
            assert row["always_valid.accuracy.estimate"][0] == pytest.approx(accuracy["estimate"])
            sign = lambda x: "−" if x < 0 else "+"  # noqa: E731
            low = f"{sign(accuracy['low'])}{abs(accuracy['low']) * 100:.1f} pt"
            assert row["always_valid.accuracy.estimate"][1].split(" [")[1].startswith(low)
        heat = page.locator(f"#chart-heatmap rect[data-variant='{variant['name']}']")
        rates = [float(heat.nth(i).get_attribute("data-rate")) for i in range(heat.count())]
        assert rates == pytest.approx(variant["block_executions"]["rates"])
    assert page.locator("#chart-accuracy circle.point").count() == len(VARIANTS)
    assert "(baseline)" in page.inner_text("#experiment-table tr[data-variant='full'] th")
    screenshot(page, "experiment")


def test_the_baseline_can_be_changed_and_may_be_absent(server, traffic, open_page):
    page = open_page(f"{server.url}/?baseline=blockdrop#experiment")
    page.wait_for_selector("#experiment[data-renders]")
    assert page.input_value("#baseline") == "blockdrop"
    shown = cells(page)
    assert shown["blockdrop"]["feedback.fixed_horizon.p_value"][0] is None
    assert shown["full"]["feedback.fixed_horizon.p_value"][0] == pytest.approx(
        field(report_of(server, baseline="blockdrop")["variants"][1], "feedback.fixed_horizon.p_value")
    )
    page = open_page(f"{server.url}/?baseline=nothing#experiment")
    page.wait_for_selector("#experiment[data-renders]")
    assert "no variant named 'nothing'" in page.inner_text("#experiment-note")
    assert all(row["feedback.fixed_horizon.p_value"][0] is None for row in cells(page).values())
