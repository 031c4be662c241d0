"""`tsd demo`: the runner, its procedural toy data, tiny random-weight models of the real
architectures (saved in the layouts users download), and the tiny teacher's pretraining."""
