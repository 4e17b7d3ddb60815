from __future__ import annotations

from fastapi import Request

from service.dataplane import DataPlane


async def get_plane(request: Request) -> DataPlane:
    # async on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop per request
    return request.app.state.plane
