"""Tools around releases and jobs: verify, regenerate, subset, viz, the report site, the config reference
(`configdoc`), and the release reader they share."""
