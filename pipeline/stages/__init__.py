"""The stages of a generation job, in the order they run: probe (the teacher's head), plan (every
sample decided), worker (one shard in, one out; no Ray), distribute (the shards on Ray), release
(manifest, index, card). `job` runs them over a job folder, reusing finished work."""
