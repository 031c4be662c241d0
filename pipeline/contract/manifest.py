"""manifest.json: the one reader and the one writer, and the checks every reader relies on.

A release root is a local folder or an fsspec URL; the manifest is read through fsspec when it is
a URL. Errors are `UserError`s naming the file.
"""
from __future__ import annotations

import datetime
import json

from . import storage
from .errors import UserError
from .files import write_if_changed
from .layout import MANIFEST, SHARD_FOLDERS, shard_kind_split
from .tasks import CLASSIFICATION, TASKS

FORMAT_VERSION = 1


def check_manifest(manifest: dict, where: str) -> None:
    """The parts of manifest.json every reader relies on; UserError('<where>: …') otherwise."""
    if not isinstance(manifest, dict):
        raise UserError(f"{where}: expected a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(f"{where}: format_version {version!r}, this tsdistill reads {FORMAT_VERSION}")
    classes = manifest.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise UserError(f"{where}: classes must be a non-empty list of names")
    if manifest.get("num_classes", len(classes)) != len(classes):
        raise UserError(f"{where}: num_classes {manifest['num_classes']} != {len(classes)} class names")
    if manifest.get("task", CLASSIFICATION) not in TASKS:
        raise UserError(f"{where}: task {manifest['task']!r} is not one of {', '.join(TASKS)}")
    for entry in manifest.get("shards") or ():
        try:
            name, kind, split = entry["name"], entry["kind"], entry["split"]
            int(entry["count"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{where}: shard entry {entry!r} lacks name/kind/split/count") from None
        try:
            named = shard_kind_split(name)
        except ValueError:
            named = None
        if named != (kind, split):
            raise UserError(f"{where}: shard {name!r} is not a {kind}/{split} shard name of this format")


def manifest_task(manifest: dict) -> str:
    """What a release is for (`task`; releases made before segmentation are classification)."""
    return manifest.get("task", CLASSIFICATION)


def _next_step(root: str) -> str:
    """What to run when a folder without a manifest holds a job's shards (generate done, release not)."""
    try:
        shards = any(storage.exists(storage.join(root, folder)) for folder in SHARD_FOLDERS)
    except (UserError, OSError, ValueError):
        return ""
    return (f"; it holds shards ({', '.join(f + '/' for f in SHARD_FOLDERS)}): once `tsd generate` has made them "
            f"all, `tsd release JOB --out {root}` writes the manifest") if shards else ""


def read_manifest(root: str) -> dict:
    """The checked manifest of the release at `root` (a folder or an fsspec URL)."""
    root = str(root)
    where = storage.join(root, MANIFEST)
    try:
        data = storage.read_bytes(where)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise UserError(f"{root}: not a release (no {MANIFEST}){_next_step(root)}") from None
    except UserError:   # the storage layer's own one-line answer: an unknown scheme, a store's own errors
        raise
    except OSError as e:
        raise UserError(f"{where}: cannot read: {e}") from None
    except ValueError as e:  # a local path open() refuses (an embedded NUL)
        raise UserError(f"{root}: cannot open this URL ({e})") from None
    try:
        manifest = json.loads(data)
    except ValueError as e:
        raise UserError(f"{where}: not valid JSON: {e}") from None
    check_manifest(manifest, where)
    return manifest


def created_now() -> str:
    """The `created` stamp of a manifest: the date it was written (UTC)."""
    return datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=False) + "\n").encode()


def new_manifest(fields: dict) -> dict:
    """A manifest from its fields, `format_version` and `created` filled in when absent."""
    return {"format_version": FORMAT_VERSION, "created": created_now(), **fields}


def write_manifest(root: str, manifest: dict) -> dict:
    """Check and write `root/manifest.json` (rewritten only when its bytes change); returns it.

    Written last by every writer: a folder with a manifest is a complete release."""
    manifest = new_manifest(manifest)
    where = storage.join(root, MANIFEST)
    check_manifest(manifest, where)
    write_if_changed(where, manifest_bytes(manifest))
    return manifest
