"""Writing the site: index.html, style.css and app.js copied from assets/, and data.js holding the
report's data as one JavaScript assignment (a browser opening file:// may not fetch a JSON file,
but it runs a script beside the page)."""
from __future__ import annotations

import json
from pathlib import Path

from ...contract.files import atomic_write

ASSETS = Path(__file__).with_name("assets")
PAGE_FILES = ("index.html", "style.css", "app.js")
DATA_JS = "data.js"


def data_js(data: dict) -> bytes:
    # "</" escaped so no string in the data can end a script element, should the file ever be inlined
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return f"window.TSD_REPORT = {text};\n".encode()


def write_site(out: Path, data: dict) -> Path:
    """The site's files in `out`; returns index.html."""
    for name in PAGE_FILES:
        atomic_write(out / name, (ASSETS / name).read_bytes())
    atomic_write(out / DATA_JS, data_js(data))
    return out / "index.html"
