"""tsdistill's light side: trains students from releases, with no teacher, Ray, diffusers or
transformers in the process. It depends on `pipeline.format` (the release contract) and
`pipeline.configlib` (the YAML loader) only."""
