"""The contract between the generation side and the trainer: the only part of `pipeline` the
trainer imports.

What both sides must agree on lives here and nowhere else, one module per concept:
- `layout`: a release's file and shard names;
- `ids`: sample ids, per-sample seeds, content hashes;
- `samples`: a sample's members, its `json` (`SampleMeta`) and the teacher encodings;
- `views`: recorded views (crop box + flip) and how a view becomes pixels (`view_pixels`);
- `images`: how an image is stored (size, encoder settings) and decoded;
- `shards`: tar shards: deterministic writing, the one reader, publishing and their stats;
- `manifest`: manifest.json read, checked and written;
- `storage`: local folders and fsspec URLs behind one set of calls; publishing complete or not at all;
- `files`: atomic writes and the one "skip if done" marker;
- `progress`: the progress line of long loops (plain periodic lines off a terminal);
- `device`: which device and dtype a process runs on;
- `configlib`, `errors`: the strict YAML → dataclass loader, and the one user-error type;
- `fielddoc`: each config key described (docs/CONFIG.md is generated from it);
- `generators`: the generator kinds (a release records its kind; a family keeps each under its name);
- `logs`: the project's warnings, one `warning: …` line each on a command's stderr.

Light on purpose: numpy, PyYAML and the standard library at module level; torch, PIL and fsspec
only inside the functions that need them. It imports nothing else of the project (a test checks).
docs/FORMAT.md describes the same in prose.
"""
