"""Training: the typed recipe, one trainer for every task (it asks the task), optimisers and
schedules, validation, DDP."""
