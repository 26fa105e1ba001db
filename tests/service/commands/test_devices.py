"""`moe-alexnet devices` (service/commands/devices.py): the OpenCL devices as JSON, one
of them the default."""

from __future__ import annotations

import json

from tests.service.commands.cli import run


def test_devices_lists_the_default(capsys):
    code, out, _ = run(capsys, "devices", "--json")
    assert code == 0
    devices = json.loads(out)["devices"]
    assert sum(d["default"] for d in devices) == 1
    assert all({"platform", "name", "compute_units", "fp16"} <= set(d) for d in devices)
    assert all(isinstance(d["int8_dot_products"], bool) for d in devices)
