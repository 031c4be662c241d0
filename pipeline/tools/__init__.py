"""Tools around releases and jobs: verify, regenerate, subset, viz, estimate (`tsd plan --dry-run`),
convert (original checkpoints → diffusers folders), and the release reader they share."""
