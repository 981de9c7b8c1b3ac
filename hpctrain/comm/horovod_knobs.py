"""Horovod's runtime settings as one value, and the HOROVOD_* environment they become (pure:
no Horovod import, so configs and tests can use it without the library)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HorovodKnobs:
    """Horovod's runtime settings, with the defaults measured on scripts/bench_comm.py
    (docs/benchmarks.md, "Horovod tuning"). Applied as HOROVOD_* variables before ``hvd.init``,
    unless the variable is already set in the environment (an explicit export wins)."""

    # 0.1 ms, not Horovod's 1 ms: at the demo's 2.6 ms steps a gradient waited for up to a
    # whole cycle; 0.1 lifted the demo CNN's 2-rank efficiency from 0.62 to 0.80-0.87 (0.05
    # was no better, 5 halved it). Fusion and cache: Horovod's own values (turning either
    # off moved nothing or lost).
    cycle_time_ms: float = 0.1
    fusion_mb: float = 128.0
    cache_capacity: int = 1024
    # > 0: the waiting thread sleeps this long between polls of an unfinished allreduce instead
    # of spinning in hvd.synchronize. It was meant to leave the core to Horovod's thread, and
    # lost in every setting measured (e.g. 0.55 against 0.62 efficiency at 1 ms cycles).
    poll_us: float = 0.0
    autotune: bool = False
    autotune_log: str | None = None


def horovod_env(timeout_s: int, knobs: HorovodKnobs | None = None) -> dict[str, str]:
    """The HOROVOD_* variables for fail-fast and the tuning knobs (pure; applied with
    setdefault before hvd.init).

    The stall inspector only shuts down when HOROVOD_STALL_SHUTDOWN_TIME_SECONDS is set
    (default: warn forever), and the shutdown time must exceed the check time to be honoured."""
    check = max(5, timeout_s // 3)
    env = {
        "HOROVOD_STALL_CHECK_TIME_SECONDS": str(check),
        "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": str(max(check + 1, timeout_s // 2)),
    }
    k = knobs or HorovodKnobs()
    if k.autotune:
        # Horovod's autotuner leaves alone every parameter given by a variable (it marks them
        # fixed), so under autotune the three below are left for it to search.
        env["HOROVOD_AUTOTUNE"] = "1"
        if k.autotune_log:
            env["HOROVOD_AUTOTUNE_LOG"] = k.autotune_log
        return env
    env["HOROVOD_CYCLE_TIME"] = f"{k.cycle_time_ms:g}"
    env["HOROVOD_FUSION_THRESHOLD"] = str(int(k.fusion_mb * (1 << 20)))
    env["HOROVOD_CACHE_CAPACITY"] = str(k.cache_capacity)
    return env
