from __future__ import annotations

from fastapi import Request

from service.dataplane import DataPlane


def get_plane(request: Request) -> DataPlane:
    return request.app.state.plane
