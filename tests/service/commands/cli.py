"""Helpers for the command tests (not a test module): run `moe-alexnet` in-process
through service.commands.main.main, and check that a failure is one line on stderr."""

from __future__ import annotations

from service.commands.main import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str) -> str:
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("moe-alexnet: error: ")
    return lines[0]
