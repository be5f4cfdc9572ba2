"""Training a recipe: the pipeline, the Trainer, optimizer, checkpoints, launches, clock and throughput."""
