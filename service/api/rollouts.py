"""``/v1/rollouts``: start a rollout of a variant (a plan of traffic steps and guardrails), watch it, and pause,
resume or abort it. Reading is open; every change needs the admin token (as ``PUT /v1/variants/{name}``), and
without ``ADMIN_TOKEN`` set the change routes answer 404. The controller itself is ``service/rollout_driver.py``."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Request
from pydantic import BaseModel, Field

from service.api.admin import require_admin
from service.api.schemas import ERROR_RESPONSES, ErrorBody
from service.rollout_driver import RolloutDriver
from service.rollouts import RolloutPlan, Status

router = APIRouter(prefix="/v1/rollouts", tags=["operations"])
CHANGE_RESPONSES = ERROR_RESPONSES | {
    401: {"model": ErrorBody, "description": "no or wrong admin token"},
    409: {"model": ErrorBody, "description": "the rollout is not in a state that allows this"},
}
VariantName = Path(max_length=64, description="the variant rolled out")


class CheckView(BaseModel):
    name: str = Field(description="accuracy, latency, errors or flops")
    state: Literal["holds", "violated", "unknown"]
    limit: float = Field(description="the plan's limit, on the same scale as the interval")
    estimate: float | None
    low: float | None = Field(description="always-valid interval at the plan's confidence; null: unbounded")
    high: float | None
    note: str | None


class ArmSummary(BaseModel):
    feedback: float
    right: float
    requests: float
    errors: float = Field(description="5xx answers")


class HistoryEntry(BaseModel):
    at: float = Field(description="Unix time")
    action: str = Field(description="start, advance, complete, rollback, pause, resume or abort")
    status: Status
    share: float = Field(description="the variant's traffic share after it, percent")
    reasons: list[str]
    evidence: dict[str, ArmSummary] = Field(description="variant and baseline counts since the rollout started")
    checks: list[CheckView] | None = None


class RolloutView(BaseModel):
    variant: str
    baseline: str
    plan: RolloutPlan
    status: Status
    step: int = Field(description="index into plan.steps")
    share: float = Field(
        description="the share the rollout gives the variant now, percent (0 once rolled back or aborted: an abort "
        "returns the weights it started from)"
    )
    started_at: float
    updated_at: float
    weights_at_start: dict[str, float] = Field(
        description="the router weights when it started: an abort returns to them, a rollback too but with the "
        "variant's weight 0"
    )
    feedback_in_step: float = Field(description="feedback on the variant since the current step began")
    evidence: dict[str, ArmSummary]
    checks: list[CheckView] = Field(description="the guardrails at the controller's last look")
    reasons: list[str] = Field(default=[], description="why the controller did what it did at its last look")
    history: list[HistoryEntry]


def get_rollouts(request: Request) -> RolloutDriver:
    return request.app.state.rollouts


def view(rollout: dict[str, Any]) -> RolloutView:
    counts = rollout["evidence"]["variant"]
    in_step = counts["right"] + counts["wrong"] - rollout["step_started_feedback"]
    evidence = {arm: _arm(counts) for arm, counts in rollout["evidence"].items()}
    return RolloutView(**(rollout | {"feedback_in_step": in_step, "evidence": evidence}))


def _arm(counts: dict[str, Any]) -> ArmSummary:
    return ArmSummary(
        feedback=counts["right"] + counts["wrong"],
        right=counts["right"],
        requests=counts["requests"],
        errors=counts["errors"],
    )


@router.get("", summary="Every rollout, active or over")
async def list_rollouts(rollouts: RolloutDriver = Depends(get_rollouts)) -> list[RolloutView]:
    return [view(rollout) for rollout in await rollouts.all()]


@router.get("/{variant}", summary="A rollout's state, evidence and history", responses=ERROR_RESPONSES)
async def read_rollout(variant: str = VariantName, rollouts: RolloutDriver = Depends(get_rollouts)) -> RolloutView:
    return view(await rollouts.get(variant))


@router.put(
    "/{variant}",
    summary="Start a rollout of the variant on a plan (admin token); 409 while one is active",
    responses=CHANGE_RESPONSES,
    dependencies=[Depends(require_admin)],
)
async def start_rollout(
    variant: str = VariantName,
    plan: RolloutPlan = Body(default_factory=RolloutPlan),
    rollouts: RolloutDriver = Depends(get_rollouts),
) -> RolloutView:
    return view(await rollouts.start(variant, plan))


@router.post(
    "/{variant}/{action}",
    summary="Pause, resume or abort a rollout (admin token); abort returns the traffic to the baseline",
    responses=CHANGE_RESPONSES,
    dependencies=[Depends(require_admin)],
)
async def act_on_rollout(
    action: Literal["pause", "resume", "abort"],
    variant: str = VariantName,
    rollouts: RolloutDriver = Depends(get_rollouts),
) -> RolloutView:
    return view(await rollouts.act(variant, action))
