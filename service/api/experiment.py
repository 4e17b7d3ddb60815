"""``GET /v1/experiment``: the A/B report the console's experiment page draws, as JSON (``service/experiment.py``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from service.api.deps import get_plane
from service.api.experiment_schemas import ExperimentReport
from service.dataplane import DataPlane
from service.experiment import DEFAULT_MARGIN, build_experiment, request_totals

router = APIRouter(prefix="/v1", tags=["v1"])


@router.get(
    "/experiment",
    response_model=ExperimentReport,
    summary="The A/B experiment: traffic, latency, FLOPs, blocks, shadow agreement and feedback accuracy per variant",
)
async def experiment(
    request: Request,
    baseline: str | None = Query(
        default=None,
        max_length=64,
        description="the variant every accuracy is tested against (default: `full` if served, else the first "
        "variant that runs every block)",
    ),
    margin: float = Query(
        default=DEFAULT_MARGIN, ge=0, le=1, description="non-inferiority margin of the always-valid decisions"
    ),
    plane: DataPlane = Depends(get_plane),
) -> dict:
    families = plane.metrics.collect()
    rates = request.app.state.request_rate.observe(request_totals(families))
    return build_experiment(families, plane.models(), baseline, rates, margin)
