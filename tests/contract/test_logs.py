"""Warnings go through `logging` (the `pipeline` and `trainer` loggers); a `tsd` command prints each
as one `warning: …` line on stderr, and no module prints a warning itself."""
from __future__ import annotations

import ast
from pathlib import Path

from pipeline.contract.logs import get_logger, print_warnings
from paths import REPO



def test_a_project_warning_is_one_stderr_line(capsys):
    log = get_logger("trainer.checkpoints")
    print_warnings()   # the handler once per process, however often asked
    log.warning("corrupt checkpoint: %s; using the one before", "step-4")
    get_logger("pipeline.stages.plan").info("not shown: only warnings and worse")
    captured = capsys.readouterr()
    assert captured.err == "warning: corrupt checkpoint: step-4; using the one before\n"
    assert captured.out == ""


def _printed_warnings(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print" and node.args:
            first = node.args[0]
            text = first.value if isinstance(first, ast.Constant) else \
                next((v.value for v in getattr(first, "values", []) if isinstance(v, ast.Constant)), "")
            if isinstance(text, str) and text.lower().startswith("warning"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_no_module_prints_a_warning():
    found = [hit for package in ("pipeline", "trainer") for p in sorted((REPO / package).rglob("*.py"))
             for hit in _printed_warnings(p)]
    assert not found, found
