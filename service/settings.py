"""Settings, read from the environment (prefix MOE_) by pydantic-settings; command-line
flags override them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from experts.repository import default_root


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOE_", extra="ignore")

    device: str = Field("", description="OpenCL device: '' (default), 'P:D', 'pocl:0', or a name")
    model_repository: Path = Field(default_factory=default_root, description="model folder root")
    default_model: str = Field("alexnet", description="model used when none is named")
    default_precision: str = Field("fp32", description="precision used when none is named")
