"""Training: recipes, the trainer, losses, optimisers, checkpoints, DDP."""
