"""Liveness, readiness and the Prometheus endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import get_plane
from service.dataplane import DataPlane

router = APIRouter(tags=["operations"])


@router.get("/healthz/live", summary="The process is up (with several API servers: and their supervisor watches)")
async def live(plane: DataPlane = Depends(get_plane)) -> JSONResponse:
    reason = plane.not_live()
    if reason is not None:
        return JSONResponse({"error": f"not live: {reason}"}, status_code=503)
    return JSONResponse({"status": "live"})


@router.get("/healthz/ready", summary="Every variant is loaded and warmed up (503 otherwise)")
async def ready(plane: DataPlane = Depends(get_plane)) -> JSONResponse:
    reason = plane.not_ready()
    if reason is None:
        return JSONResponse({"status": "ready", "variants": list(plane.variants)})
    return JSONResponse({"error": f"not ready: {reason}"}, status_code=503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(plane: DataPlane = Depends(get_plane)) -> Response:
    return Response(generate_latest(plane.metrics), media_type=CONTENT_TYPE_LATEST)
