"""tsdistill's light side: trains students from releases, with no teacher, Ray, diffusers or
transformers in the process. It depends on `pipeline.format` (the release contract) and
`pipeline.configlib` (the YAML loader) only; `trainer.synthetic`, the benchmark's fixture, also
writes shards with `pipeline.shards` (imported when it runs).

Modules: config (YAML → TrainConfig, checked against the releases), release (manifests → shard
lists), samples (one stored sample → one replayed view), data (shards → batches), losses,
students (timm models, local weights), train (the loop, DDP, checkpoints, exact resume),
evaluate, bench, device, synthetic."""
