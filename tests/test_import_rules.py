"""The house rules, read statically from every module's imports (AST: an import inside a function
counts as much as one at the top):
- the contract imports nothing else of the project and nothing heavy;
- from `pipeline`, the trainer imports only `pipeline.contract`, and nothing heavy at all (timm, webdataset and
  segmentation_models_pytorch are its libraries; importing smp does not bring transformers in);
- no import cycles between the project's modules;
- every import inside `pipeline/` points down one declared order of layers (`LAYERS`);
- `pipeline/` shows the flow: a handful of top-level modules, the rest in its subpackages.
"""
from __future__ import annotations

import ast
import os
import sys
from pathlib import Path
from paths import REPO

PACKAGES = ("pipeline", "trainer")
HEAVY = {"ray", "diffusers", "transformers", "accelerate", "timm", "webdataset", "pyarrow"}
# what the contract may import besides the standard library and itself
CONTRACT_ALLOWED = {"numpy", "yaml", "torch", "PIL", "fsspec"}
TOP_LEVEL = {"__init__", "cli", "config", "runtime"}
SUBPACKAGES = {"contract", "sources", "models", "stages", "tools", "testing", "demo", "bench"}
# The layers of `pipeline/`, bottom first (README.md's layout table says the same): a module imports
# only from its own top-level name or from a layer below. Names in one layer (`demo`, `bench`) are
# peers that do not import each other.
LAYERS = (("contract",), ("runtime",), ("sources",), ("config",), ("models",), ("stages",), ("tools",),
          ("testing",), ("demo", "bench"), ("cli",))
# pipeline/ reaches the trainer (which stands on the contract alone) only from this layer up
TRAINER_FROM = "tools"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def imports(name: str, path: Path) -> set[str]:
    """Absolute names of every module `name` imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            out.add(target)
            # `from pipeline.contract import errors`: the submodule is what is imported
            out |= {f"{target}.{alias.name}" for alias in node.names}
    return out


def project_edges() -> dict[str, set[str]]:
    """module → project modules it imports (names resolved to existing modules)."""
    mods = modules()
    edges = {}
    for name, path in mods.items():
        targets = set()
        for imported in imports(name, path):
            if imported in mods:
                targets.add(imported)
        targets.discard(name)
        edges[name] = targets
    return edges


def top(name: str) -> str:
    return name.split(".")[0]


def test_contract_is_self_contained_and_light():
    stdlib = set(sys.stdlib_module_names)
    bad = []
    for name, path in modules().items():
        if not name.startswith("pipeline.contract"):
            continue
        for imported in imports(name, path):
            root = top(imported)
            if imported.startswith("pipeline.contract") or root in stdlib or root in CONTRACT_ALLOWED \
                    or root == "__future__":
                continue
            bad.append(f"{name} imports {imported}")
    assert not bad, bad


def test_the_trainer_enters_pipeline_only_through_the_contract():
    bad = []
    for name, path in modules().items():
        if top(name) != "trainer":
            continue
        for imported in imports(name, path):
            if top(imported) == "pipeline" and imported != "pipeline" \
                    and not imported.startswith("pipeline.contract"):
                bad.append(f"{name} imports {imported}")
            if top(imported) in {"ray", "diffusers", "transformers", "accelerate"}:
                bad.append(f"{name} imports {imported}")
    assert not bad, bad


# the trainer's own libraries: it imports these and nothing of the generation side
TRAINER_LIBRARIES = {"torch", "timm", "webdataset", "segmentation_models_pytorch"}


def test_the_trainer_may_use_smp_and_smp_brings_nothing_heavy():
    """segmentation_models_pytorch builds the trainer's CNN segmentation students: the trainer imports it,
    and importing it (with the trainer's segmentation modules) loads no ray, diffusers or transformers."""
    import subprocess

    users = [name for name, path in modules().items() if top(name) == "trainer"
             and any(top(i) == "segmentation_models_pytorch" for i in imports(name, path))]
    assert users, "the trainer no longer imports segmentation_models_pytorch (update TRAINER_LIBRARIES)"
    code = ("import sys, segmentation_models_pytorch, trainer.students, trainer.export_seg, trainer.evaluate\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'diffusers', 'transformers', 'accelerate'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout


def test_no_import_cycles():
    edges = project_edges()
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(" → ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def layer_of(name: str) -> str:
    """The layer name of a module of `pipeline/`: its subpackage or top-level module."""
    return name.split(".")[1]


def rank(layer: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if layer in names)


def layering_problems(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for name, targets in sorted(edges.items()):
        if top(name) != "pipeline" or name == "pipeline":
            continue
        here = layer_of(name)
        for target in sorted(targets):
            if target == "pipeline":
                continue                      # the package itself: its version
            if top(target) == "trainer":
                if rank(here) < rank(TRAINER_FROM):
                    bad.append(f"{name} ({here}) imports {target}: the trainer is reached from {TRAINER_FROM} up")
                continue
            there = layer_of(target)
            if there != here and rank(there) >= rank(here):
                bad.append(f"{name} ({here}) imports {target} ({there})")
    return bad


def test_every_import_in_pipeline_points_down_the_layers():
    names = {layer_of(name) for name in modules() if top(name) == "pipeline" and name != "pipeline"}
    declared = {n for names_ in LAYERS for n in names_}
    assert names <= declared, f"modules outside the declared layers: {sorted(names - declared)}"
    bad = layering_problems(project_edges())
    assert not bad, bad


def test_the_layer_rule_catches_an_upward_import():
    """An import up the order, a sideways one between peers, and the trainer from below tools all fail."""
    edges = {"pipeline.config": {"pipeline.models.teacher"}, "pipeline.demo.runner": {"pipeline.bench.generate"},
             "pipeline.stages.plan": {"trainer.loop", "pipeline.contract.ids"}}
    assert len(layering_problems(edges)) == 3, layering_problems(edges)


def test_pipeline_is_grouped_by_its_flow():
    root = REPO / "pipeline"
    loose = {p.stem for p in root.glob("*.py")}
    folders = {p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert loose == TOP_LEVEL, sorted(loose - TOP_LEVEL)
    assert folders == SUBPACKAGES, sorted(folders ^ SUBPACKAGES)
    # Ray only in the distributing stage; diffusers and transformers only in models/, tools/, testing/ and the demo
    for name, path in modules().items():
        for imported in imports(name, path):
            if top(imported) == "ray":
                assert name.split(".")[:3] == ["pipeline", "stages", "distribute"], f"{name} imports ray"
            if top(imported) in {"diffusers", "transformers"}:
                assert name.split(".")[1] in {"models", "tools", "testing", "demo", "bench"}, f"{name} imports {imported}"


def test_the_rules_see_lazy_imports(tmp_path):
    """The reader counts an import inside a function, so the rules above cannot be dodged that way."""
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from pipeline.stages import plan\n    import ray\n")
    assert {"pipeline.stages", "pipeline.stages.plan", "ray"} <= imports("trainer.m", path)
