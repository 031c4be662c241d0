"""Tools around releases and jobs: verify, regenerate, subset, viz, estimate (`tsd plan --dry-run`),
bench, convert (original checkpoints → diffusers folders), and the release reader they share."""
