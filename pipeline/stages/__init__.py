"""The stages of a generation job, in the order they run: probe (the teacher's head), plan (every
sample decided: `draws`, written in the `planfile` format; `estimate` is its dry run), worker (one
shard in, one out; no Ray), distribute (the shards on Ray), release (manifest, index, card).
`jobdir` names a job folder's paths; `family` the releases of several `generator.kinds`."""
