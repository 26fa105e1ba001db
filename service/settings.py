"""Settings, read from the environment (prefix MOE_) by pydantic-settings; command-line
flags override them (service/commands/args.py).

One place names every knob, its default and its bounds, and checks it as it enters:
a bad value (MOE_MAX_BATCH_SIZE=0, an unknown precision) is refused when the process
starts instead of surfacing later as a stuck queue. README.md's settings table is
checked against this class by the tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from experts.model.calibration import parse_layer_precisions
from experts.model.dual_module import parse_dual_request
from experts.model.repository import default_root
from kernels.precision import check_precisions

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def default_decode_workers(cpus: int | None) -> int:
    """One per core, at most 4. On a CPU OpenCL device these threads compete with the
    device's own, but fewer starve small models of decoded images."""
    return max(1, min(4, cpus or 2))


def _comma_list(value: Any) -> Any:
    """MOE_MODELS=alexnet,caffenet: a comma list rather than pydantic's JSON lists."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    # populate_by_name: flags set fields by name; the environment uses the aliases.
    model_config = SettingsConfigDict(env_prefix="MOE_", extra="ignore", populate_by_name=True)

    device: str = Field("", description="OpenCL device: '' (default), 'P:D', 'pocl:0', or a name")
    model_repository: Path = Field(default_factory=default_root, description="model folder root")
    default_model: str = Field("alexnet", description="model used when none is named")
    default_precision: str = Field(
        "fp32",
        description="precision used when none is named; auto: per batch, the most accurate "
        "loaded one predicted to meet the requests' deadlines",
    )
    layer_precisions: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        # MOE_LAYER_PRECISION: the older name, still read
        validation_alias=AliasChoices("MOE_LAYER_PRECISIONS", "MOE_LAYER_PRECISION"),
        description="per-layer precision over the default, e.g. 'conv1=fp32,fc8=fp16' "
        "(every model served must have those layers; per-model maps go in model.json)",
    )

    dual_module: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="layers run with their little modules (dual-module inference), e.g. "
        "'fc6,fc7' or 'all'; '' or 'none': off (requests choose with dual_module)",
    )

    # -- the HTTP server (moe-alexnet serve) ------------------------------------------
    host: str = Field("0.0.0.0", description="address the server binds")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port)")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="models to serve, comma list (empty: every model in the repository; "
        "with random_weights: the built-in architectures)",
    )
    precisions: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["fp32"], description="precisions loaded for every model"
    )
    random_weights: bool = Field(
        False,
        description="serve built-in architectures (alexnet, caffenet) on seeded random "
        "weights, for development and benchmarks",
    )
    seed: int = Field(0, description="seed of the random weights")
    max_batch_size: int = Field(8, ge=1, le=256, description="images run together, at most")
    max_queue_delay_ms: float = Field(
        5.0, ge=0, le=10_000, description="longest wait for a batch to fill, milliseconds"
    )
    max_queue_size: int = Field(64, ge=1, description="requests waiting, at most (then 503)")
    request_timeout_s: float = Field(
        30.0, gt=0, description="per-request deadline, seconds (then 504)"
    )
    max_body_bytes: int = Field(10 * 2**20, ge=1, description="largest request body (then 413)")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="largest image, in pixels, checked before decoding"
    )
    decode_workers: int = Field(
        default_factory=lambda: default_decode_workers(os.cpu_count()),
        ge=1,
        le=64,
        description="threads decoding and preprocessing images (default: one per core, at most 4)",
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="on SIGTERM, how long in-flight requests may take to finish"
    )
    log_level: str = Field("info", description="critical, error, warning, info or debug")

    @field_validator("models", "precisions", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("precisions")
    @classmethod
    def _precisions(cls, value: list[str]) -> list[str]:
        return check_precisions(value)

    @field_validator("default_precision")
    @classmethod
    def _precision(cls, value: str) -> str:
        return value if value == "auto" else check_precisions([value])[0]

    @field_validator("layer_precisions", mode="before")
    @classmethod
    def _layers(cls, value: Any) -> Any:
        return parse_layer_precisions(value) if isinstance(value, str) else value

    @field_validator("dual_module", mode="before")
    @classmethod
    def _dual(cls, value: Any) -> Any:
        return parse_dual_request(value) if isinstance(value, str) else value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value
