"""Settings (service/settings.py): read from MOE_* environment variables (older names
too), the decode workers' default, and README.md's settings table against the class."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from service.settings import Settings, default_decode_workers
from tests.helpers import ROOT


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("MOE_MODELS", "tiny, other")
    monkeypatch.setenv("MOE_PRECISIONS", "fp32")
    monkeypatch.setenv("MOE_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("MOE_MAX_QUEUE_DELAY_MS", "2.5")
    monkeypatch.setenv("MOE_LOG_LEVEL", "WARNING")
    s = Settings()
    assert s.models == ["tiny", "other"] and s.precisions == ["fp32"]
    assert s.max_batch_size == 16 and s.max_queue_delay_ms == 2.5 and s.log_level == "warning"
    assert (s.max_queue_size, s.max_body_bytes, s.drain_timeout_s) == (64, 10 * 2**20, 30.0)
    monkeypatch.setenv("MOE_DECODE_WORKERS", "3")
    assert Settings().decode_workers == 3


@pytest.mark.parametrize("cpus, workers", [(None, 2), (1, 1), (2, 2), (3, 3), (64, 4)])
def test_decode_workers_default_to_the_cores_up_to_four(cpus, workers):
    assert default_decode_workers(cpus) == workers


def _readme_settings() -> dict[str, str]:
    """README.md's settings table: variable -> default as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(MOE_[A-Z_]+)` \| ([^|]*) \|", table, flags=re.MULTILINE)
    return {name: default.strip() for name, default in rows}


def _env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    return alias.choices[0] if alias is not None else f"MOE_{field.upper()}"


def _written(value: str) -> Any:
    """A default as the table writes it, as a value (None: described in words)."""
    value = value.strip("`")
    if value in ("off", "on"):
        return value == "on"
    units = {"MiB": 2**20, "M": 10**6}
    number = re.fullmatch(r"(\d+(?:\.\d+)?)(?: (MiB|M))?", value)
    if number:
        return float(number.group(1)) * units.get(number.group(2), 1)
    return value if re.fullmatch(r"[\w./-]+", value) else None


def test_readme_settings_table_is_the_settings_class():
    """Every setting has its row, under its environment name, and no row names a
    setting that does not exist; the defaults written as values are the class's."""
    rows = _readme_settings()
    assert set(rows) == {_env_name(field) for field in Settings.model_fields}
    defaults = Settings.model_construct()
    for field in Settings.model_fields:
        written = _written(rows[_env_name(field)])
        if written is None:  # described in words: "(first PoCL CPU, else first GPU)"
            continue
        actual = getattr(defaults, field)
        actual = actual[0] if isinstance(actual, list) and len(actual) == 1 else actual
        assert written == actual, (field, written, actual)


def test_layer_precisions_under_the_new_name_and_the_old(monkeypatch):
    monkeypatch.setenv("MOE_LAYER_PRECISION", "conv1=fp32")
    assert Settings().layer_precisions == {"conv1": "fp32"}
    monkeypatch.setenv("MOE_LAYER_PRECISIONS", "fc8=int8")  # the new name wins
    assert Settings().layer_precisions == {"fc8": "int8"}
    assert Settings(layer_precisions={"fc": "fp16"}).layer_precisions == {"fc": "fp16"}


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("MOE_PRECISIONS", "fp32,fp8", "unknown precision fp8"),
        ("MOE_DEFAULT_PRECISION", "int4", "unknown precision int4"),
        ("MOE_LAYER_PRECISIONS", "fc=bf8", "layer precision for 'fc': unknown precision 'bf8'"),
    ],
)
def test_precisions_are_checked_as_they_enter(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=re.escape(message)):
        Settings()


@pytest.mark.parametrize(
    "value,want", [("fc6, fc7", ("fc6", "fc7")), ("all", ("all",)), ("none", ()), ("", ())]
)
def test_dual_module_from_the_environment(monkeypatch, value, want):
    monkeypatch.setenv("MOE_DUAL_MODULE", value)
    assert Settings().dual_module == want


def test_dual_module_none_with_layers_is_refused(monkeypatch):
    monkeypatch.setenv("MOE_DUAL_MODULE", "none,fc6")
    with pytest.raises(ValidationError, match="'none' cannot be combined"):
        Settings()
