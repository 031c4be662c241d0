"""Sources: the decode rules for one image file, ingest (a user's dataset → a checked, split index)
and the source index every later stage reads."""
