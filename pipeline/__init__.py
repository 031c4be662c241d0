"""tsdistill's generation side: ingest, probe, plan, generate (Ray + diffusion), release.

Importing this package loads nothing heavy; ray, diffusers and transformers are imported inside
the modules that need them (models/, distribute)."""
__version__ = "0.1.0"
