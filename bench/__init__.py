"""Benchmarks of hf_clm's stages against their limits and the conventional way: ``python -m bench``."""
