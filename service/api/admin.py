"""``/v1/variants/{name}``: a variant's runtime settings (default threshold, A/B weight), read by anyone and changed
by an operator holding the admin token. Without ``ADMIN_TOKEN`` set, the change route does not exist (404)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.api.deps import get_plane
from service.api.schemas import ERROR_RESPONSES
from service.dataplane import DataPlane
from service.errors import NotFound, ServiceError

router = APIRouter(prefix="/v1/variants", tags=["operations"])


class VariantUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is refused, not ignored with a 200

    threshold: float | None = Field(
        default=None, gt=0, lt=1, allow_inf_nan=False, description="new default policy threshold"
    )
    budget: str | None = Field(default=None, description="or a compute budget, mapped on the calibrated curve")
    weight: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="new A/B weight, relative to the others' (finite)"
    )

    @model_validator(mode="after")
    def _changes_something(self) -> VariantUpdate:
        if self.threshold is None and self.budget is None and self.weight is None:
            raise ValueError("give threshold, budget or weight")
        return self


class VariantSettingsView(BaseModel):
    name: str
    mode: str
    threshold: float | None
    weight: float
    traffic_share: float


def require_admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    token = request.app.state.settings.admin_token
    if not token:
        raise NotFound("not found: this service takes no changes at runtime (its ADMIN_TOKEN setting is not set)")
    scheme, _, offered = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(offered.strip().encode(), token.encode()):
        raise ServiceError(
            "this route needs the admin token: Authorization: Bearer TOKEN", 401, {"WWW-Authenticate": "Bearer"}
        )


@router.get("/{name}", summary="A variant's runtime settings", responses=ERROR_RESPONSES)
async def read_variant(name: str, plane: DataPlane = Depends(get_plane)) -> VariantSettingsView:
    return VariantSettingsView(**plane.runtime.variant_settings(name))


@router.put(
    "/{name}",
    summary="Change a variant's default threshold (or budget) and A/B weight at runtime (admin token)",
    responses=ERROR_RESPONSES,
    dependencies=[Depends(require_admin)],
)
async def update_variant(
    name: str, update: VariantUpdate, plane: DataPlane = Depends(get_plane)
) -> VariantSettingsView:
    changed = plane.runtime.update_variant(name, update.threshold, update.budget, update.weight)
    return VariantSettingsView(**changed)
