"""The console in a real browser: headless Chromium (Debian's, or ``BLOCKDROP_CHROMIUM``) driven by Playwright's
sync API against a real server process. Skipped, with the reason, where Playwright or Chromium is missing.

Every page opened through ``open_page`` fails its test on a browser console error or an uncaught exception.
Screenshots go to ``BLOCKDROP_SCREENSHOTS_DIR`` when it is set (``docs/img`` refreshes the README's), else to a
temporary folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CHROMIUM_ENV = "BLOCKDROP_CHROMIUM"
SCREENSHOTS_ENV = "BLOCKDROP_SCREENSHOTS_DIR"
VIEWPORT = {"width": 1280, "height": 900}
# fast settings for a test server: every shipped variant, in-process inference, no warm-up pass; and requests that
# wait for their batch rather than being shed (503) when the machine is busy with other tests: a page sends one
# request per variant at once, and these tests are about what it draws, not about overload
SERVER_SETTINGS = {"inference_workers": "thread", "warmup": "false", "grpc_port": 0, "queue_wait_budget_ms": 8000}


def chromium_path() -> str | None:
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        return configured if Path(configured).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Chromium for one test module: Playwright's sync API keeps an event loop running in this thread while it is
    open, which would break every later test that calls ``asyncio.run``."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[test]')")
    executable = chromium_path()
    if executable is None:
        pytest.skip(f"no Chromium found (apt-get install chromium, or point {CHROMIUM_ENV} at one)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


def note_console(message, problems: list[str], expected: tuple[str, ...] = ()) -> None:
    if message.type == "error" and not any(part in message.text for part in expected):
        problems.append(f"console error: {message.text} at {message.location}")


@pytest.fixture
def open_page(browser) -> Iterator[Callable[[str], object]]:
    """Open a URL in a fresh page; the test fails if the browser logged an error (but those with a part of
    ``expected_errors`` in their text) or a script threw."""
    problems: list[str] = []
    contexts = []

    def opener(url: str, expected_errors: tuple[str, ...] = ()):
        context = browser.new_context(viewport=VIEWPORT)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.on("console", lambda message: note_console(message, problems, expected_errors))
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]")
        return page

    yield opener
    for context in contexts:
        context.close()
    assert problems == []


@pytest.fixture(scope="session")
def screenshot(tmp_path_factory) -> Callable[[object, str], Path]:
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)

    def take(page, name: str, selector: str | None = None) -> Path:
        """The whole page, or only the element ``selector`` picks."""
        path = folder / f"{name}.png"
        if selector is None:
            page.screenshot(path=str(path), full_page=True)
        else:
            page.locator(selector).screenshot(path=str(path))
        return path

    return take
