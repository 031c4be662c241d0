"""Code kept in two places on purpose (the trainer may import nothing of pipeline/ but its contract)
is marked `# Copied from <module>.<name>` and must stay the same as its original, as diffusers checks
its copies."""
from __future__ import annotations

import ast
import re
from pathlib import Path
from paths import REPO

MARK = re.compile(r"^# Copied from ([\w.]+)\.(\w+)", re.M)
DEFINITION = re.compile(r"^(?:def|class) (\w+)", re.M)


def _definition(path: Path, name: str) -> ast.AST:
    tree = ast.parse(path.read_text(), str(path))
    return next(node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name)


def copies() -> list[tuple[Path, str, Path, str]]:
    """(copy's file, its name, original's file, original's name) for every mark in the project."""
    found = []
    for path in sorted([*(REPO / "pipeline").rglob("*.py"), *(REPO / "trainer").rglob("*.py")]):
        text = path.read_text()
        for mark in MARK.finditer(text):
            name = DEFINITION.search(text, mark.end()).group(1)   # the definition the mark stands above
            found.append((path, name, REPO / (mark.group(1).replace(".", "/") + ".py"), mark.group(2)))
    return found


def test_every_marked_copy_is_its_original():
    found = copies()
    assert any(p.name == "probe_finetune.py" and name == "learning_rate" for p, name, _, _ in found)
    for path, name, original, original_name in found:
        copy, source = _definition(path, name), _definition(original, original_name)
        assert ast.dump(copy) == ast.dump(source), f"{path}:{name} differs from {original}:{original_name}"


def test_the_copied_schedules_agree():
    from pipeline.stages.probe_finetune import learning_rate as probe_schedule
    from trainer.loop import learning_rate as trainer_schedule

    for step in range(12):
        assert probe_schedule(step, 10, 3, 0.5) == trainer_schedule(step, 10, 3, 0.5)
