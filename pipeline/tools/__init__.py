"""Tools around releases and jobs: verify, regenerate, subset, viz, the config reference
(`configdoc`), the release reader they share; and, until they move to their own subpackage, the
benchmarks (bench, gpubench, bench_scale: the `bench` layer of tests/test_layout.py)."""
