"""Model loaders: the teacher and its probe head, the generator registry, the tiny defaults."""
