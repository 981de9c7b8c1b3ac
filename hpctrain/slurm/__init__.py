"""Slurm integration: submitit executors, requeue on preemption/timeout, retries, status and sweeps.

Nothing heavy is imported here; see docs/slurm.md.
"""
