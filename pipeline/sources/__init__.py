"""Sources: the decode rules for one image file (`decode`), the datasets' own layouts (`layouts`),
ingest (a user's dataset → a checked, split index: `scan` finds the candidate files, `lists` reads a
.csv/.parquet list of them, `split` orders the classes and splits train/val, `ingest` decodes,
writes and is the command), and the source index every later stage reads (`index`)."""
