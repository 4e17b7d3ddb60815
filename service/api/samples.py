"""``/v1/samples``: the sample images that ship with the package (one CIFAR-10 test image per class, named after
it), for the console's playground and for trying the service without images of one's own."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from service.api.schemas import ErrorBody
from service.errors import NotFound

SAMPLES = Path(__file__).resolve().parent.parent / "samples"

router = APIRouter(prefix="/v1/samples", tags=["console"])


class Sample(BaseModel):
    name: str = Field(examples=["cat.png"])
    label: str = Field(description="the image's true class (its file name)", examples=["cat"])
    url: str = Field(examples=["/v1/samples/cat.png"])


class SampleList(BaseModel):
    samples: list[Sample]


def sample_files() -> dict[str, Path]:
    return {path.name: path for path in sorted(SAMPLES.glob("*.png"))}


@router.get("", summary="The sample images that ship with the service")
async def list_samples() -> SampleList:
    return SampleList(
        samples=[Sample(name=name, label=path.stem, url=f"/v1/samples/{name}") for name, path in sample_files().items()]
    )


@router.get(
    "/{name}",
    summary="One sample image (PNG)",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        404: {"model": ErrorBody, "description": "no sample of that name"},
    },
)
async def read_sample(name: str) -> Response:
    path = sample_files().get(name)
    if path is None:
        raise NotFound(f"no sample named {name!r}; GET /v1/samples lists them")
    return Response(path.read_bytes(), media_type="image/png")
