"""Training: config, loop, models, schedules, checkpoints."""
