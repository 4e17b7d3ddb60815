"""The web console at ``/`` (a playground and the A/B experiment, ``service/console/``): plain HTML, CSS and
JavaScript files served by the service itself, so it works offline and needs no build step."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

CONSOLE = Path(__file__).resolve().parent.parent / "console"
ASSETS_PATH = "/console"

router = APIRouter(tags=["console"])


@router.get("/", response_class=HTMLResponse, summary="The web console: try an image, read the A/B experiment")
async def console() -> HTMLResponse:
    return HTMLResponse((CONSOLE / "index.html").read_text(encoding="utf-8"))


def mount_console_assets(app: FastAPI) -> None:
    """The console's scripts and styles under ``/console/`` (index.html links them there)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=CONSOLE), name="console")
