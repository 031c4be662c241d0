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
    assert any(words[-1:] == ["."] for words in installs), installs
    for words in installs:
        for word in words:
            assert not any(names_package(word, p) for p in HEAVY), f"trainer image installs {word}"
            assert "pipeline" not in word and "[all]" not in word, f"trainer image installs an extra: {word}"


def test_worker_image_installs_the_pipeline_extra():
    installs = pip_installs(REPO / "docker" / "worker.Dockerfile")
    assert any(re.fullmatch(r"\.\[(.*,)?pipeline(,.*)?\]", w) for words in installs for w in words), installs


def constraints() -> dict[str, str]:
    """package (normalised name) → the version constraints.txt pins."""
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: not an exact pin: {line}"
            out[normalise(name)] = version
    return out


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.split("[")[0]).lower()


def pins(words: list[str]) -> dict[str, str]:
    return {normalise(w.split("==")[0]): w.split("==")[1] for w in words if "==" in w and not w.startswith("-")}


@pytest.mark.parametrize("image", ["worker", "trainer"])
def test_images_install_the_tested_stack(image):
    """Every pip install goes through constraints.txt, every version a Dockerfile pins is the one
    constraints.txt holds, and torch comes from a CUDA wheel index at that version."""
    path = REPO / "docker" / f"{image}.Dockerfile"
    tested = constraints()
    installs = pip_installs(path)
    assert installs
    for words in installs:
        assert "-c" in words and words[words.index("-c") + 1] == "constraints.txt", f"{path.name}: {words}"
        for package, version in pins(words).items():
            assert tested.get(package) == version, \
                f"{path.name} pins {package}=={version}; constraints.txt holds {tested.get(package)}"
    torch_lines = [words for words in installs if "torch" in pins(words)]
    assert len(torch_lines) == 1 and "torchvision" in pins(torch_lines[0])
    index = torch_lines[0][torch_lines[0].index("--index-url") + 1]
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index), index
    copied = [args.split() for n, args in instructions(path) if n == "COPY"]
    assert ["constraints.txt", "./"] in copied


def test_the_pin_check_sees_a_wrong_version():
    """The check above can fail: a pin constraints.txt does not hold is caught."""
    words = shlex.split("pip install -c constraints.txt torch==2.5.1")[2:]
    assert pins(words) == {"torch": "2.5.1"} != {"torch": constraints()["torch"]}


@pytest.mark.parametrize("image", ["worker", "trainer"])
def test_images_carry_a_c_compiler_and_python_headers(image):
    """Triton compiles a C stub at first use (torch.compile, CUDA graphs): gcc, libc headers, and a
    base whose Python ships its headers (the official python images do)."""
    path = REPO / "docker" / f"{image}.Dockerfile"
    base = next(args for name, args in instructions(path) if name == "FROM")
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    apt = " ".join(args for name, args in instructions(path) if name == "RUN" and "apt-get install" in args)
    assert {"gcc", "libc6-dev"} <= set(apt.split()), apt


def test_ci_and_the_readme_install_the_tested_stack(project):
    readme = (REPO / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv") and "&&" in line]
    assert len(commands) == 2 and all("pip install -c constraints.txt -e '.[all]'" in c for c in commands)
    tested = constraints()
    for name, version in re.findall(r"\b(torch|torchvision)==([\w.]+)", readme):   # the CPU-only install's pins
        assert tested[name] == version, f"README pins {name}=={version}, constraints.txt holds {tested[name]}"
    assert project["requires-python"] == ">=3.11"
    tested = constraints()
    for dependency in project["dependencies"] + project["optional-dependencies"]["pipeline"]:
        match = re.match(r"([A-Za-z0-9_.\-\[\]]+)\s*(>=|==)\s*([\w.]+)", dependency)
        name, op, floor = match.groups()
        version = tested[normalise(name)]
        assert version_tuple(version) >= version_tuple(floor), f"constraints.txt {name} {version} below {floor}"


def version_tuple(version: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


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
