"""tsdistill's light side: trains students from releases, with no teacher, Ray, diffusers or
transformers in the process. From `pipeline` it imports `pipeline.contract` only (the release
format, views, the YAML loader, the device rule, the user-error type).

Modules: config (YAML → TrainConfig, checked against the releases), release (manifests → shard
lists), samples (one stored sample → one replayed view), data (shards → batches), losses,
students (timm models, local weights), loop (the training loop), checkpoints (atomic
checkpoints, resume), processes (ranks, DDP, RNG state), runlog (log.jsonl, TensorBoard),
runfiles (the names of a run folder's files), runfolder (claiming a run folder: its lock),
train (`tsd train`), evaluate (`tsd eval`), export (`tsd export`), compare (`tsd compare`), bench
(`tsd bench train`), synthetic (the benchmark's and tests' release fixture)."""
