"""The alert rules: pure functions over sample records. No clock, no IO, no threads.

A sample is the dict the sampler writes (see :mod:`hpctrain.monitor.sampler`): per-step mean
timings of its window (``steps``, ``step_s``, ``data_wait_s``, ``exchange_s``, ``h2d_s``),
``rss_mb`` and ``gpu`` (None without one). Thresholds come from the ``monitor`` section of the
training config (:class:`hpctrain.train.config.MonitorConfig`), or any object with the same
attributes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

INPUT_BOUND = "input_bound"
STRAGGLER = "straggler"
GPU_MEMORY = "gpu_memory"
RSS_LEAK = "rss_leak"
FARM_IDLE = "farm_idle"
KINDS = (INPUT_BOUND, STRAGGLER, GPU_MEMORY, RSS_LEAK, FARM_IDLE)

INPUT_ADVICE = ("a bigger data.prefetch (the loader's read-ahead thread), uncompressed shards ('hpctrain shard "
                "--compression none'), lighter augmentation.ops, or shards on a faster file system")


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str
    rank: int | None
    node: str | None
    message: str
    facts: dict[str, Any] = field(default_factory=dict)

    def as_record(self) -> dict:
        return {"kind": "alert", "alert": self.kind, "rank": self.rank, "node": self.node, "message": self.message,
                "facts": dict(self.facts)}

    @staticmethod
    def from_record(rec: dict) -> Alert:
        return Alert(kind=str(rec.get("alert")), rank=rec.get("rank"), node=rec.get("node"),
                     message=str(rec.get("message", "")), facts=dict(rec.get("facts") or {}))

    def key(self) -> tuple:
        return (self.kind, self.rank)

    def to_dict(self) -> dict:
        return asdict(self)


def _where(rank: int | None, node: str | None) -> str:
    return f"rank {rank}" + (f" on {node}" if node else "")


def window_timings(samples: Sequence[dict]) -> dict[str, float] | None:
    """Step-weighted means of the timings over ``samples``; None when they hold no step."""
    steps = sum(int(s.get("steps") or 0) for s in samples)
    if steps == 0:
        return None
    out = {"steps": float(steps)}
    for k in ("step_s", "data_wait_s", "exchange_s", "h2d_s"):
        out[k] = sum(float(s.get(k) or 0.0) * int(s.get("steps") or 0) for s in samples) / steps
    return out


def input_bound(samples: Sequence[dict], cfg: Any, *, rank: int | None = None,
                node: str | None = None) -> Alert | None:
    """Data wait above ``cfg.input_bound_fraction`` of step time over the samples (at least
    ``cfg.min_steps`` steps, so one slow first batch does not cry wolf)."""
    t = window_timings(samples)
    if t is None or t["steps"] < cfg.min_steps or t["step_s"] <= 0:
        return None
    share = t["data_wait_s"] / t["step_s"]
    if share <= cfg.input_bound_fraction:
        return None
    return Alert(INPUT_BOUND, rank, node,
                 f"{_where(rank, node)} is input-bound: it waits on the loader {share:.0%} of each step "
                 f"({t['data_wait_s'] * 1e3:.1f} of {t['step_s'] * 1e3:.1f} ms, over {int(t['steps'])} steps; "
                 f"threshold {cfg.input_bound_fraction:.0%}). Try {INPUT_ADVICE}",
                 {"data_wait_share": round(share, 4), "data_wait_ms": round(t["data_wait_s"] * 1e3, 3),
                  "step_ms": round(t["step_s"] * 1e3, 3), "steps": int(t["steps"])})


def gpu_memory(sample: dict, cfg: Any, *, rank: int | None = None, node: str | None = None) -> Alert | None:
    gpu = sample.get("gpu")
    if not gpu or not gpu.get("mem_total_mb"):
        return None
    frac = float(gpu["mem_used_mb"]) / float(gpu["mem_total_mb"])
    if frac <= cfg.gpu_memory_fraction:
        return None
    return Alert(GPU_MEMORY, rank, node,
                 f"{_where(rank, node)}: GPU memory {frac:.1%} used ({gpu['mem_used_mb']:.0f} of "
                 f"{gpu['mem_total_mb']:.0f} MB; threshold {cfg.gpu_memory_fraction:.0%}); the next larger batch "
                 "or activation may not fit: lower data.batch_size or use run.precision=bf16",
                 {"used_fraction": round(frac, 4), "mem_used_mb": gpu["mem_used_mb"],
                  "mem_total_mb": gpu["mem_total_mb"]})


def slope_and_r(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope of ys over xs and the correlation r (0 when either does not vary)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    if sxx == 0:
        return 0.0, 0.0
    slope = sxy / sxx
    r = sxy / math.sqrt(sxx * syy) if syy > 0 else 0.0
    return slope, r


def rss_leak(samples: Sequence[dict], cfg: Any, *, rank: int | None = None, node: str | None = None) -> Alert | None:
    """Host RSS growing steadily over the last ``cfg.leak_window`` samples: the fitted growth over
    the window is at least ``cfg.leak_min_mb`` and RSS correlates with time at least ``cfg.leak_min_r``
    (a steady climb; a single jump, such as the first epoch filling caches, has a lower r)."""
    pts = [(float(s["time"]), float(s["rss_mb"])) for s in samples if s.get("rss_mb") is not None
           and s.get("time") is not None][-cfg.leak_window:]
    if len(pts) < cfg.leak_window:
        return None
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    slope, r = slope_and_r(xs, ys)
    span = xs[-1] - xs[0]
    growth = slope * span
    if growth < cfg.leak_min_mb or r < cfg.leak_min_r:
        return None
    per_min = slope * 60.0
    return Alert(RSS_LEAK, rank, node,
                 f"{_where(rank, node)}: host memory (RSS) grows steadily, {per_min:.1f} MB/min over the last "
                 f"{len(pts)} samples ({ys[0]:.0f} -> {ys[-1]:.0f} MB, r={r:.2f}); a leak? Look for tensors kept "
                 "across steps (a loss summed without .item(), a growing list)",
                 {"mb_per_min": round(per_min, 3), "r": round(r, 4), "rss_first_mb": ys[0], "rss_last_mb": ys[-1],
                  "samples": len(pts)})


def median_low(values: Sequence[float]) -> float:
    """The lower middle value: with two ranks it is the faster one, so a rank twice as slow as its
    only peer stands out (the mean of the middle pair would need it to be three times as slow)."""
    v = sorted(values)
    return v[(len(v) - 1) // 2]


def stragglers(busy_s: Sequence[float | None], nodes: Sequence[str | None], cfg: Any,
               steps: Sequence[int] | None = None) -> list[Alert]:
    """Ranks whose own step time (compute + data wait + copy; not the exchange, where the fast
    ranks wait for the slow one) exceeds ``cfg.straggler_factor`` x the median over the ranks.
    ``busy_s[r]`` is None for a rank with no step since the last gather."""
    known = [(r, t) for r, t in enumerate(busy_s) if t is not None and (steps is None or steps[r] >= cfg.min_steps)]
    if len(known) < 2:
        return []
    med = median_low([t for _, t in known])
    if med <= 0:
        return []
    out = []
    for r, t in known:
        if t > cfg.straggler_factor * med:
            node = nodes[r] if r < len(nodes) else None
            out.append(Alert(STRAGGLER, r, node,
                             f"straggler: {_where(r, node)} takes {t * 1e3:.1f} ms per step for its own work, "
                             f"{t / med:.1f}x the median of the {len(known)} ranks ({med * 1e3:.1f} ms; threshold "
                             f"{cfg.straggler_factor:g}x); every other rank waits for it in the gradient exchange. "
                             "Check that node's load, its GPU clocks and its share of the data",
                             {"step_ms": round(t * 1e3, 3), "median_ms": round(med * 1e3, 3),
                              "ratio": round(t / med, 3), "ranks": len(known)}))
    return out


def farm_idle(free: dict[int, Any], waiting: Sequence[Any], fits: Any, *, describe: Any = str) -> list[Alert]:
    """Idle farm workers while tasks wait that none of them can hold (placement cannot fit them).
    ``free``: worker id -> free resources of a worker running nothing; ``waiting``: the resource
    needs of the queued tasks (one per distinct need); ``fits(need, free)``: whether it fits."""
    if not waiting:
        return []
    out = []
    for wid, room in sorted(free.items()):
        if any(fits(shape, room) for shape in waiting):
            continue  # it will be given work on its next request
        out.append(Alert(FARM_IDLE, wid, None,
                         f"worker {wid} is idle ({describe(room)} free) while tasks wait that it cannot "
                         f"hold (they need {'; '.join(sorted({describe(s) for s in waiting}))}); give the tasks "
                         "smaller needs or the workers more (--cpus-per-worker, --gpus-per-worker, --mem-per-worker)",
                         {"free": describe(room), "waiting_shapes": sorted({describe(s) for s in waiting})}))
    return out


class Cooldown:
    """Which alerts are new: an alert of the same kind for the same rank is held back for
    ``cooldown_s`` after the last one. Pure apart from the times it is given."""

    def __init__(self, cooldown_s: float):
        self.cooldown_s = cooldown_s
        self.last: dict[tuple, float] = {}

    def admit(self, alert: Alert, now: float) -> bool:
        t = self.last.get(alert.key())
        if t is not None and now - t < self.cooldown_s:
            return False
        self.last[alert.key()] = now
        return True
