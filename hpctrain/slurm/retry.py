"""Retries after a crash: the policy, as pure functions of the run's journal state.

A completed or requeued run needs nothing; a permanent error (bad config, import error,
missing data) fails once; any other death (crash, OOM, a killed rank) is retried into the
same run dir, with exponential backoff, until ``--retries`` are spent.
:mod:`hpctrain.slurm.after_step` applies a decision (the batch script's after-step on Slurm,
the foreground supervisor of ``--cluster local``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from hpctrain.errors import ConfigError
from hpctrain.slurm import journal


@dataclass(kw_only=True, slots=True)
class RetryPolicy:
    # --retries and --retry-backoff are generated from these fields (hpctrain.config.add_flags)
    retries: int = field(default=0, metadata={"help": "resubmissions after a crash (not after permanent errors)"})
    backoff_s: float = field(default=30.0, metadata={"flag": "--retry-backoff",
                                                     "help": "seconds before the first retry; doubles each time"})
    backoff_max_s: float = field(default=600.0, metadata={"help": "cap of the retry delay (s)"})

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ConfigError(f"--retries must be >= 0, got {self.retries}")
        # NaN and inf pass '< 0' and would become 'sbatch --begin=now+nan'
        for flag, v in (("--retry-backoff", self.backoff_s), ("retry backoff cap", self.backoff_max_s)):
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{flag} must be a finite number of seconds >= 0, got {v}")


@dataclass(frozen=True, slots=True)
class RetryDecision:
    action: Literal["none", "retry", "fail"]
    delay_s: float = 0.0
    reason: str = ""


def decide_retry(st: journal.RunState, *, exit_code: int, completed: bool, policy: RetryPolicy) -> RetryDecision:
    """What follows a finished job step (pure)."""
    if completed or st.state == "COMPLETED":
        return RetryDecision("none", reason="completed")
    if st.state in ("REQUEUED", "INTERRUPTED", "CANCELLED"):
        return RetryDecision("none", reason=st.state.lower())
    if st.state == "FAILED" and st.permanent:
        return RetryDecision("fail", reason=f"not retried (permanent error): {st.reason}")
    why = st.reason if st.crashed and st.reason else f"job step exited with code {exit_code}"
    if st.retries >= policy.retries:
        return RetryDecision("fail", reason=f"failed after {st.retries} retries (--retries {policy.retries}): {why}")
    delay = min(policy.backoff_s * (2 ** st.retries), policy.backoff_max_s)
    return RetryDecision("retry", delay_s=delay, reason=f"retry {st.retries + 1}/{policy.retries} after: {why}")
