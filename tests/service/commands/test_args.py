"""Argument parsing (service/commands/args.py): an unknown precision or per-layer
precision is a usage error (exit 2), in either spelling of the flag."""

from __future__ import annotations

import pytest

from service.commands.main import main


def test_unknown_precision_is_a_usage_error(capsys, repo):
    with pytest.raises(SystemExit) as exc:
        main(["classify", "x.jpg", "--precision", "fp64"])
    assert exc.value.code == 2
    assert "unknown precision fp64" in capsys.readouterr().err
    for flag in ("--layer-precisions", "--layer-precision"):  # the older spelling too
        with pytest.raises(SystemExit) as exc:
            main(["eval", "--model", "tiny", flag, "fc=int4"])
        assert exc.value.code == 2
        assert "layer precision for 'fc': unknown precision 'int4'" in capsys.readouterr().err
