"""Service settings: one typed object, from ``BLOCKDROP_*`` environment variables and an optional settings file.

Every default works out of the box: the five shipped CIFAR-10 checkpoints (BlockDrop ResNet-32, full ResNet-32,
Network-Slimming ResNet-32, BlockDrop on the slimmed ResNet-32, Big-Little ResNet), an even A/B/n split.
Complex values are JSON in the environment, e.g.
``BLOCKDROP_VARIANTS='[{"name": "full", "artifact": "/models/r32", "mode": "full"}]'``.
The settings file (``BLOCKDROP_SETTINGS_FILE``, TOML or JSON) is read first; environment variables override it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from service.adaptive import AdaptiveSettings

ENV_PREFIX = "BLOCKDROP_"
SETTINGS_FILE_ENV = f"{ENV_PREFIX}SETTINGS_FILE"
CHECKPOINTS = Path(__file__).resolve().parent.parent / "models" / "checkpoints"


class RayScaling(BaseModel):
    """How a variant's deployment scales on a Ray cluster (``blockdrop serve --ray``). The defaults fit a 2-core
    machine serving the five shipped variants: each may double, and all of them at twice still fit its 2 CPUs."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(default=1, ge=1, description="replicas kept even when idle")
    max_replicas: int = Field(default=2, ge=1, description="replicas Ray may scale up to under load")
    target_ongoing_requests: float = Field(
        default=16, gt=0, description="calls in flight per replica that autoscaling aims at"
    )
    num_cpus: float = Field(default=0.15, gt=0, description="logical CPUs Ray reserves per replica (fractions fit)")
    torch_threads: int = Field(default=1, ge=1, description="intra-op threads per replica (and OMP_NUM_THREADS)")
    max_ongoing_requests: int = Field(
        default=64,
        ge=1,
        description="calls a replica takes at once (each carries the images one ingress had at one moment)",
    )
    max_queued_requests: int = Field(
        default=256, ge=1, description="calls waiting for a replica in each ingress before 503 + Retry-After"
    )
    upscale_delay_s: float = Field(default=3.0, ge=0)
    downscale_delay_s: float = Field(default=30.0, ge=0)
    look_back_period_s: float = Field(default=30.0, gt=0, description="the window autoscaling averages load over")

    @model_validator(mode="after")
    def _bounds(self) -> RayScaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        return self


class RaySettings(BaseModel):
    """The service on a Ray cluster: the ingress deployment (HTTP, routing, A/B) and where the cluster is."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        default=None, description="join this Ray cluster (e.g. ray://head:10001 or auto); unset: start a local one"
    )
    app_name: str = Field(default="blockdrop", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    ingress_replicas: int = Field(default=1, ge=1, description="replicas of the HTTP ingress")
    ingress_cpus: float = Field(default=0.5, gt=0)
    ingress_max_ongoing_requests: int = Field(default=512, ge=1)
    sync_interval_s: float = Field(
        default=1.0, gt=0, description="how often each ingress shares its metrics and reads operator changes"
    )
    haproxy: bool = Field(
        default=True,
        description="Ray Serve's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY) in place of its Python proxy: 2-3x the "
        "requests/s here (bench/results/ray.md); set on the clusters this command starts and in the KubeRay manifest",
    )
    ingress_drain_s: float = Field(
        default=5.0,
        gt=0,
        description="with HAProxy: how long a stopping ingress replica keeps answering (Ray's default is 30 s)",
    )
    max_surge_percent: int = Field(
        default=100,
        ge=0,
        le=100,
        description="extra replicas a redeploy starts before stopping old ones (0: replace in place, with a gap)",
    )
    haproxy_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="HAProxy's Prometheus exporter on HOST:this port; 0: off"
    )
    dashboard: bool = Field(
        default=False, description="Ray's dashboard on HOST:dashboard_port (what `serve status` talks to)"
    )
    dashboard_port: int = Field(default=8265, ge=1, le=65535)


class VariantSettings(BaseModel):
    """A routable model: a name, an artifact folder, a mode and (for ``blockdrop``) the policy threshold."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    artifact: Path
    mode: Literal["blockdrop", "full"] = "full"
    threshold: float | None = Field(default=None, ge=0.0, le=1.0, description="default: the artifact's")
    weight: float = Field(
        default=1.0, ge=0.0, allow_inf_nan=False, description="share of unpinned traffic, relative to the others"
    )
    adaptive: AdaptiveSettings | None = Field(
        default=None, description="blockdrop only: raise the threshold under load (service/adaptive.py)"
    )
    ray: RayScaling = Field(default_factory=RayScaling, description="its deployment on a Ray cluster")


def default_variants() -> list[VariantSettings]:
    """Every shipped CIFAR-10 checkpoint, each with a fifth of the unpinned traffic."""
    shipped = (
        ("blockdrop", "cifar10-resnet32-blockdrop", "blockdrop"),
        ("full", "cifar10-resnet32-e200", "full"),
        ("slim", "cifar10-resnet32-slim", "full"),
        ("slim-blockdrop", "cifar10-resnet32-slim-blockdrop", "blockdrop"),
        ("biglittle", "cifar10-blresnet", "full"),
    )
    return [
        VariantSettings(name=name, artifact=CHECKPOINTS / folder, mode=mode, weight=20)
        for name, folder, mode in shipped
    ]


def default_state_dir() -> Path:
    """Outside the package and the working directory, per the XDG base directory specification."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "blockdrop"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    variants: list[VariantSettings] = Field(default_factory=default_variants)
    shadow_variant: str | None = Field(default=None, description="run this variant too, after answering")
    shadow_fraction: float = Field(default=0.0, ge=0.0, le=1.0, description="share of requests shadowed")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    grpc_port: int = Field(
        default=8001, ge=0, le=65535, description="Open Inference Protocol v2 over gRPC on this port; 0 turns it off"
    )
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    torch_threads: int | None = Field(
        default=None, ge=1, description="intra-op threads; default on CPU: all cores but one"
    )
    inference_workers: Literal["process", "thread"] = Field(
        default="process",
        description="process: each variant's model runs in a worker process of its own (never waits for the "
        "event loop's GIL; a crashed worker is replaced); thread: in a thread of the service's process",
    )
    worker_heartbeat_timeout_s: float = Field(
        default=1.0,
        gt=0.0,
        description="a worker process whose heartbeat (every 0.1 s) is older than this is killed and started again; "
        "its variant is not ready from that moment",
    )
    api_servers: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="API server processes accepting on the one port (HTTP and gRPC), in front of one model server "
        "per variant replica; 1: a single process; default: one per four cores (1 below 8 cores)",
    )
    worker_replicas: int = Field(
        default=1, ge=1, le=16, description="worker processes per variant (inference_workers=process), batches spread"
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="json: one JSON object per line (a line per inference request); text: plain lines"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = Field(default=False, description="uvicorn's own access log, beside the request log lines")
    fast_path: bool = Field(
        default=True, description="answer raw-image POST /v1/classify in pure ASGI, ahead of FastAPI's routing"
    )
    fold_batchnorm: bool = Field(
        default=True, description="merge each BatchNorm into its convolution at load (same logits, fewer operators)"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        # fp32 until a GPU run has verified bf16's masks and top-1 (bench gpu's agreement), then auto
        default="fp32",
        description="the backbones' precision (channels-last below fp32); policies stay fp32. auto: bf16 on a CUDA "
        "GPU that computes it natively, else fp32",
    )
    executor: Literal["plain", "bucketed"] = Field(
        default="plain",
        description="plain: gather exactly the rows that keep each block; bucketed: batch and kept rows padded to "
        "a few static shapes (models/engine.py), what CUDA graphs capture",
    )
    cuda_graphs: bool = Field(
        default=False,
        description="on CUDA: the bucketed executor with its pieces captured in CUDA graphs at start-up (off until "
        "a GPU run has verified them; shapes not captured run eagerly)",
    )
    cuda_graph_capture_s: float = Field(
        default=60.0, gt=0, description="time budget per variant for capturing CUDA graphs; the rest runs eagerly"
    )
    cuda_graph_capture_mb: int = Field(
        default=4096, ge=1, description="GPU memory budget per variant for CUDA graphs; the rest runs eagerly"
    )
    cuda_signature_graphs: int = Field(
        default=0,
        ge=0,
        description="with cuda_graphs: also keep up to this many whole-backbone graphs, one per signature (batch "
        "bucket and each block's kept-row bucket), admitted from the second sighting by how often each comes back, "
        "those of the artifact's most frequent masks (frequent_masks) captured at start-up; 0 turns them off",
    )

    max_batch_size: int = Field(default=32, ge=1)
    max_batch_wait_ms: float = Field(default=2.0, ge=0.0)
    queue_limit: int = Field(default=256, ge=1, description="waiting images per variant before 503")
    queue_wait_budget_ms: float = Field(
        default=250.0,
        gt=0.0,
        description="the longest an image may wait for its batch (or for room to decode) before the request gets a "
        "503 with Retry-After: under any overload, p99 stays near this plus the model's batch time",
    )
    request_timeout_s: float = Field(default=10.0, gt=0.0, description="deadline per request before 504")
    prestop_s: float = Field(
        default=5.0,
        ge=0.0,
        description="after SIGTERM, how long readiness answers 503 while requests are still served, so that load "
        "balancers polling readiness take the instance out before it stops accepting connections; then it drains",
    )
    max_header_bytes: int = Field(
        default=32 * 1024, ge=1024, description="request line and headers, in all, before a 431 (connection closed)"
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0.0, description="time to send a request's headers before a 408 (connection closed)"
    )
    retry_after_s: int = Field(default=1, ge=1)

    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    body_timeout_s: float = Field(
        default=30.0, gt=0.0, description="time to send a request's body after its headers before a 408 (closed)"
    )
    body_memory_mb: int = Field(
        default=256,
        ge=1,
        description="bytes of request bodies being received at once, in each API server; past it a 503 with "
        "Retry-After (connection closed)",
    )
    max_pixels: int = Field(default=40_000_000, ge=1, description="width x height, checked before decoding")
    max_image_scale: float = Field(
        default=64.0,
        gt=1.0,
        description="an image may decode to at most the pixels of a square this many times the model's input a side "
        "(2048 x 2048 pixels for a 32 x 32 model, in any shape; a JPEG decodes at a reduced scale first); larger "
        "ones get a 413",
    )
    decode_memory_mb: int = Field(
        default=256, ge=1, description="memory for images being decoded at once; past it requests wait, then get 503"
    )
    decode_threads: int | None = Field(
        default=None,
        ge=1,
        description="threads decoding large images; default: all cores but one, so large images never take every "
        "core from the small requests beside them",
    )
    max_images_per_request: int = Field(default=64, ge=1)
    max_top_k: int = Field(default=10, ge=1)
    admin_token: str | None = Field(
        default=None,
        description="bearer token for PUT /v1/variants/{name}; unset, the admin routes answer 404",
        repr=False,
    )
    budget_levels: dict[str, float] = Field(
        default_factory=lambda: {"fast": 0.6, "balanced": 0.75, "accurate": 1.0},
        description="named compute budgets (X-Compute-Budget / ?budget=), as fractions of the full network's FLOPs",
    )

    ray: RaySettings = Field(default_factory=RaySettings, description="blockdrop serve --ray")

    feedback_capacity: int = Field(default=100_000, ge=1, description="recent predictions kept for feedback")
    feedback_ttl_s: float = Field(default=3600.0, gt=0.0)
    warmup: bool = True

    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="where state that outlives the process is kept (rollouts.sqlite3); shared by the API servers "
        "of one machine. Default: $XDG_STATE_HOME/blockdrop, else ~/.local/state/blockdrop",
    )
    rollout_interval_s: float = Field(
        default=5.0, gt=0.0, description="how often the rollout controller adds evidence and decides"
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return value

    @property
    def body_memory_bytes(self) -> int:
        """``body_memory_mb`` in bytes, the budget each server process's body bounds share (HTTP, Ray, gRPC)."""
        return self.body_memory_mb * 1024 * 1024

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        names = [v.name for v in self.variants]
        if not names:
            raise ValueError("at least one variant is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique: {names}")
        if sum(v.weight for v in self.variants) <= 0:
            raise ValueError("at least one variant needs a positive weight")
        if self.shadow_variant is not None and self.shadow_variant not in names:
            raise ValueError(f"shadow_variant {self.shadow_variant!r} is not one of the variants {names}")
        if self.queue_limit < self.max_images_per_request:  # such a request would get 503s however long it retried
            raise ValueError(
                f"queue_limit ({self.queue_limit}) must be at least max_images_per_request "
                f"({self.max_images_per_request}): a request's images wait in one variant's queue together"
            )
        return self

    @field_validator("budget_levels")
    @classmethod
    def _budgets_are_fractions(cls, levels: dict[str, float]) -> dict[str, float]:
        for name, value in levels.items():
            if not 0 < value <= 1:
                raise ValueError(f"budget level {name!r} must be a fraction in (0, 1], got {value}")
        return levels

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        settings_file = os.environ.get(SETTINGS_FILE_ENV)
        if settings_file:
            path = Path(settings_file)
            if not path.is_file():
                raise ValueError(f"{SETTINGS_FILE_ENV}={settings_file} does not exist")
            if path.suffix == ".toml":
                sources += (TomlConfigSettingsSource(settings_cls, toml_file=path),)
            else:
                sources += (JsonConfigSettingsSource(settings_cls, json_file=path),)
        return sources


def default_api_servers(cores: int) -> int:
    """One API server per four cores: on CPU the model servers need the rest (docs/operations.md, sizing)."""
    return max(1, cores // 4)
