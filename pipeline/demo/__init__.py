"""`tsd demo`: the runner, the tiny teacher's pretraining, the real-size run (`realsize`) and the
published layouts it writes. The tiny models and toy data it shares with the benchmarks and the
tests live below it, in `pipeline.testing`."""
