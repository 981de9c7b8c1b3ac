"""Waiting until a run has really finished: pure decisions, driven through seams.

A run goes PENDING -> RUNNING and, on preemption, its time limit or a crash with retries
left, back to REQUEUED/PENDING (same job id) or to a new job (a retry): none of those is
an end. Only COMPLETED, FAILED and CANCELLED are. This module decides, from the sequence
of states a poller observes, when the wait is over and with which exit code; the poller,
the clock and the sleep are arguments, so the tests drive it with fakes and
``hpctrain.slurm.status.wait_run`` drives it with ``run_status`` and real time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

from hpctrain.errors import ConfigError
from hpctrain.slurm.journal import TERMINAL

EXIT_COMPLETED = 0
EXIT_ENDED = 1        # FAILED (TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, ... in Slurm's words) or CANCELLED
EXIT_BAD_INPUT = 2    # what every hpctrain command returns for a usage or config error
EXIT_TIMEOUT = 124    # --wait-timeout passed; the job is left alone (the code coreutils' timeout uses)
EXIT_INTERRUPTED = 130  # Ctrl-C: waiting stopped, the job was not touched

DEFAULT_POLL_S = 5.0
# slurmctld's view of a job can pass through an end-like state while a requeue is under way;
# an end that only slurmctld reports (the run dir logs none) must hold this long, over at least
# two polls, before the wait believes it. An end the run dir logs is believed at once.
SETTLE_S = 5.0


@dataclass(frozen=True, slots=True)
class Observation:
    """One poll of a run: hpctrain's state plus what the messages need."""

    state: str
    job_id: str | None = None
    recorded: bool = False   # the run dir's event log itself says the run ended in this state
    reason: str = ""
    slurm_state: str = ""    # slurmctld's JobState, when it answered
    requeues: int = 0
    retries: int = 0
    failing_rank: int | None = None


@dataclass(frozen=True, slots=True)
class WaitResult:
    outcome: Literal["completed", "ended", "timeout", "interrupted"]
    exit_code: int
    elapsed_s: float
    last: Observation | None = None


@dataclass(frozen=True, slots=True)
class Step:
    show: bool                    # a new state (or job) to print
    final: bool                   # the wait is over
    wake_in: float | None = None  # poll again within this many seconds (an end is settling)


@dataclass(slots=True)
class Tracker:
    """Folds observations into 'print this' and 'finished' decisions (pure)."""

    settle_s: float = SETTLE_S
    shown: tuple[str, str | None] | None = None
    _pending: str | None = None
    _since: float = 0.0
    _polls: int = 0

    def see(self, obs: Observation, now: float) -> Step:
        key = (obs.state, obs.job_id)
        if obs.state not in TERMINAL:
            self._pending = None
            return self._step(key, final=False)
        if obs.recorded:
            self._pending = None
            return self._step(key, final=True)
        if self._pending != obs.state:
            self._pending, self._since, self._polls = obs.state, now, 0
        self._polls += 1
        waited = now - self._since
        if self._polls >= 2 and waited >= self.settle_s:
            return self._step(key, final=True)
        # not printed yet: if the requeue goes on, this end was never real
        return Step(show=False, final=False, wake_in=max(self.settle_s - waited, 0.0))

    def _step(self, key: tuple[str, str | None], *, final: bool) -> Step:
        show = key != self.shown
        if show:
            self.shown = key
        return Step(show=show, final=final)


def exit_code_for(state: str) -> int:
    if state == "COMPLETED":
        return EXIT_COMPLETED
    if state in TERMINAL:
        return EXIT_ENDED
    raise ValueError(f"{state!r} is not a final state (expected one of {', '.join(TERMINAL)})")


def next_sleep(now: float, deadline: float | None, poll_s: float, wake_in: float | None = None) -> float | None:
    """Seconds to sleep before the next poll, or None once the deadline has passed.

    The last sleep is cut short so that one more poll lands exactly on the deadline: a run
    that ends just before it is reported as ended, not as a timeout.
    """
    pause = poll_s if wake_in is None else min(poll_s, wake_in)
    if deadline is None:
        return pause
    left = deadline - now
    if left <= 0:
        return None
    return min(pause, left)


def check_wait_options(*, wait: bool, poll_s: float | None, timeout_s: float | None) -> float:
    """The poll interval to use; ConfigError (exit 2) for values that cannot work."""
    if not wait:
        given = [name for name, v in (("--poll", poll_s), ("--wait-timeout", timeout_s)) if v is not None]
        if given:
            raise ConfigError(f"{' and '.join(given)} only apply with --wait; add --wait (or drop them)")
        return DEFAULT_POLL_S
    if poll_s is not None and not (math.isfinite(poll_s) and poll_s > 0):
        raise ConfigError(f"--poll must be a number of seconds > 0, got {poll_s}; e.g. --poll {DEFAULT_POLL_S:g}")
    if timeout_s is not None and not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ConfigError(f"--wait-timeout must be a number of seconds > 0, got {timeout_s}; "
                          "leave it out to wait as long as the job takes")
    return DEFAULT_POLL_S if poll_s is None else poll_s


def wait_until_final(poll: Callable[[], Observation], *, poll_s: float, timeout_s: float | None = None,
                     clock: Callable[[], float], sleep: Callable[[float], None],
                     on_change: Callable[[float, Observation], None] = lambda t, obs: None,
                     settle_s: float = SETTLE_S) -> WaitResult:
    """Poll until the run is final, ``timeout_s`` has passed, or Ctrl-C. Never cancels anything."""
    start = clock()
    deadline = None if timeout_s is None else start + timeout_s
    tracker = Tracker(settle_s=settle_s)
    last: Observation | None = None
    try:
        while True:
            last = poll()
            now = clock()
            step = tracker.see(last, now)
            if step.show:
                on_change(now - start, last)
            if step.final:
                code = exit_code_for(last.state)
                return WaitResult("completed" if code == EXIT_COMPLETED else "ended", code, now - start, last)
            pause = next_sleep(now, deadline, poll_s, step.wake_in)
            if pause is None:
                return WaitResult("timeout", EXIT_TIMEOUT, now - start, last)
            sleep(pause)
    except KeyboardInterrupt:
        return WaitResult("interrupted", EXIT_INTERRUPTED, clock() - start, last)


# ------------------------------------------------------------------ messages (pure)

def format_elapsed(seconds: float) -> str:
    s = int(max(seconds, 0.0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def change_line(elapsed_s: float, obs: Observation) -> str:
    line = f"[{format_elapsed(elapsed_s):>6}] {obs.state:<10} job {obs.job_id or '-'}"
    return line + (f"  -- {obs.reason}" if obs.reason else "")


def end_message(res: WaitResult, *, run: str, ref: str, timeout_s: float | None = None) -> str:
    """What to tell the user once waiting is over; ``ref`` is the run as a shell-quoted argument."""
    obs = res.last or Observation(state="UNKNOWN")
    took = format_elapsed(res.elapsed_s)
    job = f"job {obs.job_id or '-'}"
    if res.outcome == "completed":
        return f"run {run!r} COMPLETED after {took} ({job}; requeues {obs.requeues}, retries {obs.retries})"
    if res.outcome == "ended":
        slurm = f", Slurm state {obs.slurm_state}" if obs.slurm_state and obs.slurm_state != obs.state else ""
        rank = f" --rank {obs.failing_rank}" if obs.failing_rank else ""
        return (f"run {run!r} ended {obs.state} after {took} ({job}{slurm})\n"
                f"  log: hpctrain logs {ref}{rank}    details: hpctrain status {ref}")
    hint = f"  wait again: hpctrain status {ref} --wait    cancel it: hpctrain cancel {ref}"
    if res.outcome == "timeout":
        limit = f" (--wait-timeout {timeout_s:g})" if timeout_s is not None else ""
        return (f"gave up waiting after {took}{limit}: run {run!r} is {obs.state} ({job}); "
                f"the job was not cancelled\n{hint}")
    return f"stopped waiting after {took}: run {run!r} is {obs.state} ({job}); nothing was cancelled\n{hint}"
