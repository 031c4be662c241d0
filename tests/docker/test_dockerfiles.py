"""docker/: each image installs only its side. Parsed, not built (no Docker engine in the tests)."""
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from paths import REPO
HEAVY = ("ray", "diffusers", "transformers")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):   # a comment inside a continued instruction
            continue
        current += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            logical.append(current.strip())
            current = ""
    out = []
    for text in logical:
        name, _, args = text.partition(" ")
        out.append((name.upper(), args.strip()))
    return out


def pip_installs(path: Path) -> list[list[str]]:
    """The arguments of every `pip install` in the RUN instructions."""
    out = []
    for name, args in instructions(path):
        if name != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"] or words[:3] == ["python", "-m", "pip"]:
                out.append(words[2:])
    return out


def names_package(word: str, package: str) -> bool:
    return re.match(rf"^{package}(\[|[<>=!~]|$)", word) is not None


def test_trainer_image_installs_the_base_package_only():
    installs = pip_installs(REPO / "docker" / "trainer.Dockerfile")
    assert ["."] in installs, installs
    for words in installs:
        for word in words:
            assert not any(names_package(word, p) for p in HEAVY), f"trainer image installs {word}"
            assert "pipeline" not in word and "[all]" not in word, f"trainer image installs an extra: {word}"


def test_worker_image_installs_the_pipeline_extra_on_a_matching_cuda():
    path = REPO / "docker" / "worker.Dockerfile"
    installs = pip_installs(path)
    assert any(re.fullmatch(r"\.\[(.*,)?pipeline(,.*)?\]", w) for words in installs for w in words), installs
    base = next(args for name, args in instructions(path) if name == "FROM")
    match = re.match(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-.*runtime", base)
    assert match, f"worker base is not a CUDA runtime image: {base}"
    cuda_tag = f"cu{match.group(1)}{match.group(2)}"
    torch_lines = [words for words in installs if any(names_package(w, "torch") for w in words)]
    assert torch_lines and all(f"https://download.pytorch.org/whl/{cuda_tag}" in words for words in torch_lines)


def test_both_images_copy_what_the_install_needs():
    for name in ("worker", "trainer"):
        copied = [args.split()[:-1] for n, args in instructions(REPO / "docker" / f"{name}.Dockerfile") if n == "COPY"]
        sources = {s for group in copied for s in group}
        assert {"pyproject.toml", "README.md", "pipeline", "trainer"} <= sources
        assert all((REPO / s).exists() for s in sources)
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv"} <= ignored
    assert not ignored & {"pipeline", "trainer", "pyproject.toml", "README.md"}


def test_ray_in_the_worker_image_is_the_rayjobs_version():
    installs = pip_installs(REPO / "docker" / "worker.Dockerfile")
    pins = [w.split("==")[1] for words in installs for w in words if names_package(w, "ray") and "==" in w]
    rayjob = yaml.safe_load((REPO / "manifests" / "rayjob-generate.yaml").read_text())
    assert pins == [rayjob["spec"]["rayClusterSpec"]["rayVersion"]]


@pytest.fixture(scope="module")
def project():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_heavy_libraries_are_only_in_the_pipeline_extra(project):
    base = project["dependencies"]
    for package in HEAVY:
        assert not any(names_package(d, package) for d in base), f"{package} is a base dependency"
        assert any(names_package(d, package) for d in project["optional-dependencies"]["pipeline"])
