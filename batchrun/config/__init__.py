"""A job as validated, immutable objects: the job file, the gateway presets, prices and budgets."""
