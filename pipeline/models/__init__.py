"""The models: the teacher and its probed head, the generators (built by `build` from their kinds in
`pipeline.contract.generators`), ldm's DDIM sampler, and checkpoint conversion (`convert`)."""
