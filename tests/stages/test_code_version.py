"""The version has one source, pyproject.toml: the package reads it from its metadata (or, run from
a source tree without installing, from pyproject.toml), and the CLI and the manifest's code version say it."""
from __future__ import annotations

import importlib.metadata
import tomllib

import pipeline
from pipeline.cli import main
from pipeline.stages.release import code_version
from paths import REPO

PYPROJECT_VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_the_version_is_pyprojects(capsys):
    assert pipeline.__version__ == PYPROJECT_VERSION
    try:
        main(["--version"])
    except SystemExit:
        pass
    assert capsys.readouterr().out.strip() == f"tsdistill {PYPROJECT_VERSION}"
    assert code_version().startswith(f"tsdistill {PYPROJECT_VERSION}")


def test_an_uninstalled_tree_reads_pyproject(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert pipeline._version() == PYPROJECT_VERSION
