"""tsdistill's generation side: ingest, probe, plan, generate (Ray + diffusion), release.

Importing this package loads nothing heavy; ray, diffusers and transformers are imported inside
the modules that need them (models/, distribute)."""


def _version() -> str:
    """pyproject.toml is the one source: read from the installed package's metadata, or, in a source
    tree run without installing it, from pyproject.toml itself."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tsdistill")
    except PackageNotFoundError:
        import re
        from pathlib import Path

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        found = re.search(r'^version = "([^"]+)"', pyproject.read_text(), re.M) if pyproject.is_file() else None
        return found.group(1) if found else "unknown"


__version__ = _version()
