"""Signal -> flag -> (checkpoint at the next step boundary) -> requeue.

The handler only records which signal arrived. It does no IO and no collective: the
training loop polls :meth:`PreemptionFlag.is_set` at step boundaries, the ranks agree,
write the checkpoint collectively, and only then rank 0 asks Slurm to requeue.

Timeout vs preemption is decided from Slurm's own facts (the job's EndTime against now),
not from how long this process has run: submitit's elapsed-time test calls every signal
of a job shorter than 10 minutes a timeout.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Literal

# USR1 is taken by NCCL; USR2 is Slurm's and submitit's usual choice.
DEFAULT_SIGNAL = "USR2"
DEFAULT_SIGNAL_DELAY_S = 90
# Slurm sends the time-limit signal from a periodic check, so it may come late (less
# time left), never early; this only absorbs clock rounding and the scontrol round trip.
CLOCK_SLACK_S = 30

Kind = Literal["timeout", "preemption", "terminated"]

# How the next attempt is started. "resubmit": the batch script's after-step submits a new
# job for the same run dir, which may start at once. "requeue": `scontrol requeue` keeps the
# job id (for other jobs' --dependency on it), but Slurm 22.05 then holds the job until its
# old launch credential has expired (AuthInfo cred_expire + 1 s, 121 s by default) and sets
# that hold when the old attempt has ended, so nothing inside the job can lift it.
Restart = Literal["resubmit", "requeue"]
RESTART_MODES = ("resubmit", "requeue")


def signal_number(name: str) -> int:
    from hpctrain.errors import ConfigError

    name = name.upper().removeprefix("SIG")
    if name == "USR1":
        raise ConfigError("--signal USR1 is refused: NCCL uses SIGUSR1; use USR2 (the default)")
    num = getattr(signal, f"SIG{name}", None)
    if num is None:
        raise ConfigError(f"--signal {name!r} is not a signal name; expected e.g. USR2")
    return int(num)


class PreemptionFlag:
    """A flag set by the preemption/timeout signal (and SIGTERM); poll ``is_set`` at step boundaries.

    A second SIGTERM is not swallowed: it restores the default action and re-raises, so a
    job whose work is done, or that ignores the flag, still dies.
    """

    def __init__(self, signal_name: str = DEFAULT_SIGNAL) -> None:
        self._signum = signal_number(signal_name)
        self.received: int | None = None
        self._old: dict[int, object] = {}

    def install(self) -> PreemptionFlag:
        for s in (self._signum, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handler)
        return self

    def uninstall(self, *, keep_preemption_signal: bool = False) -> None:
        """Back to the default actions (not submitit's, which bypass SIGTERM).

        ``keep_preemption_signal``: SIGTERM kills again, but the preemption signal stays caught
        (a repeat only sets the flag again). For the rest of a job step after its work has
        stopped: there the default action of USR2 (terminate) would kill the step before it
        records and starts the next attempt, and a second USR2 does come (seen in CI: exit 140
        between 'stop requested' and the requeue record)."""
        for s in list(self._old):
            if keep_preemption_signal and s == self._signum:
                continue
            signal.signal(s, signal.SIG_DFL)
            del self._old[s]

    def _handler(self, signum: int, frame) -> None:  # noqa: ARG002
        if signum == signal.SIGTERM and self.received == signal.SIGTERM:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)
            return
        # a SIGTERM after USR2 (Slurm's kill sequence) upgrades the reason to "terminated"
        if self.received is None or signum == signal.SIGTERM:
            self.received = signum

    def is_set(self) -> bool:
        return self.received is not None

    def set(self, signum: int | None = None) -> None:
        """Raise the flag by hand (tests, or a callback that wants to stop)."""
        self.received = self._signum if signum is None else signum

    @property
    def terminated(self) -> bool:
        return self.received == signal.SIGTERM


def classify_interrupt(*, got_sigterm: bool, seconds_left: float | None, signal_delay_s: int,
                       slack_s: int = CLOCK_SLACK_S) -> Kind:
    """Why the flag went up. ``seconds_left`` is EndTime - now from slurmctld (None: no limit)."""
    if got_sigterm:
        return "terminated"
    if seconds_left is not None and seconds_left <= signal_delay_s + slack_s:
        return "timeout"
    return "preemption"


@dataclass(kw_only=True, slots=True)
class RequeuePolicy:
    # The CLI flags (hpctrain submit, sweep, train --requeue) are generated from these fields
    # (hpctrain.config.add_flags): the defaults and help texts below are the only ones.
    max_timeouts: int = field(default=3, metadata={"help": "requeues after hitting the time limit (then FAILED)"})
    max_preemptions: int | None = field(default=None, metadata={"help": "requeues after preemption",
                                                                "default_text": "unlimited"})
    signal: str = field(default=DEFAULT_SIGNAL, metadata={
        "help": "signal Slurm sends before the end ('#SBATCH --signal'); USR1 is refused (NCCL uses it)"})
    signal_delay_s: int = field(default=DEFAULT_SIGNAL_DELAY_S, metadata={
        "flag": "--signal-delay", "metavar": "S",
        "help": "seconds before the time limit that the signal is sent; tells a time limit from a preemption"})
    restart: Restart = field(default="resubmit", metadata={
        "help": "after a preemption/time-limit signal: 'resubmit' (a new job for the run dir, starts at once) "
                "or 'requeue' (same job id, Slurm holds it ~cred_expire, 121 s by default)"})

    def __post_init__(self) -> None:
        from hpctrain.errors import ConfigError

        signal_number(self.signal)
        if self.max_timeouts < 0:
            raise ConfigError(f"--max-timeouts must be >= 0, got {self.max_timeouts}")
        if self.max_preemptions is not None and self.max_preemptions < 0:
            raise ConfigError(f"--max-preemptions must be >= 0, got {self.max_preemptions}")
        if self.restart not in RESTART_MODES:
            raise ConfigError(f"--restart {self.restart!r} is not one of {', '.join(RESTART_MODES)}; "
                              "use resubmit (the default) or requeue (keeps the job id)")
        if self.signal_delay_s < 1:
            raise ConfigError(f"--signal-delay must be >= 1 s, got {self.signal_delay_s}")


@dataclass(frozen=True, slots=True)
class RequeueDecision:
    requeue: bool
    reason: str


def decide_requeue(kind: Kind, *, timeouts_so_far: int, preemptions_so_far: int,
                   policy: RequeuePolicy) -> RequeueDecision:
    """Whether to requeue after this interrupt; the counts exclude the current one."""
    if kind == "terminated":
        # scancel, a preemption that requeues on its own, or `scontrol requeue`: Slurm decides,
        # a self-requeue would only add a second one.
        return RequeueDecision(False, "SIGTERM from Slurm: checkpointed and left the requeue to Slurm")
    if kind == "timeout":
        if timeouts_so_far + 1 > policy.max_timeouts:
            return RequeueDecision(False, f"hit the time limit {timeouts_so_far + 1} times "
                                          f"(--max-timeouts {policy.max_timeouts}); raise --time or --max-timeouts")
        return RequeueDecision(True, f"time limit ({timeouts_so_far + 1}/{policy.max_timeouts})")
    if policy.max_preemptions is not None and preemptions_so_far + 1 > policy.max_preemptions:
        return RequeueDecision(False, f"preempted {preemptions_so_far + 1} times "
                                      f"(--max-preemptions {policy.max_preemptions})")
    return RequeueDecision(True, f"preempted ({preemptions_so_far + 1})")
