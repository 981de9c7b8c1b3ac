"""Reading a run dir's monitor samples: the per-rank summary, the PNG timelines, the alerts,
the last sample of each rank (for ``hpctrain status``) and following the files as they grow.

Readers only: the files are written by :mod:`hpctrain.monitor.sampler`. A torn last line (a
rank still writing, or killed mid-line) is skipped, never an error.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from hpctrain.errors import HpctrainError
from hpctrain.rundir import RunDir

TIMINGS = ("step_s", "data_wait_s", "exchange_s", "h2d_s")
FIGURES = ("cpu_pct", "rss_mb", "read_mb_s", "write_mb_s")
GPU_FIGURES = ("util_pct", "mem_used_mb", "temp_c", "power_w")


class NoSamples(HpctrainError):
    """The run dir holds no monitor samples."""


def find_run(arg: str, base: Path) -> Path:
    """A run given as a path or a name under ``base``: any run dir, submitted or trained directly."""
    for cand in (Path(arg), Path(base) / arg):
        if cand.is_dir():
            return cand.resolve()
    raise NoSamples(f"no run {arg!r}: neither {arg!r} nor {str(Path(base) / arg)!r} is a directory; pass the run "
                    "dir (run.dir of the training config) or set HPCTRAIN_RUNS / --runs-dir")


def parse_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn line of a rank still writing
        if isinstance(rec, dict) and isinstance(rec.get("kind"), str):
            out.append(rec)
    return out


def read_samples(run_dir: str | Path) -> dict[int, list[dict]]:
    """rank -> its records, in file order."""
    out: dict[int, list[dict]] = {}
    for path in RunDir(run_dir).monitor_files():
        recs = parse_lines(path.read_text(encoding="utf-8", errors="replace"))
        try:
            rank = int(path.stem.split("-", 1)[1])
        except (IndexError, ValueError):
            continue
        out[rank] = recs
    return out


def load_samples(run_dir: str | Path) -> dict[int, list[dict]]:
    """:func:`read_samples`, or NoSamples saying why there are none."""
    rd = RunDir(run_dir)
    if not rd.path.is_dir():
        raise NoSamples(f"{str(rd.path)!r} is not a directory; give a run dir (or a run name under $HPCTRAIN_RUNS)")
    data = read_samples(rd.path)
    if not data:
        raise NoSamples(f"{str(rd.monitor)!r} holds no rank-R.jsonl samples: the run has not started yet, or "
                        "it ran with monitor.enabled=false (turn it on: --set monitor.enabled=true)")
    return data


@dataclass(slots=True)
class RankSummary:
    rank: int
    node: str | None
    samples: int
    steps: int
    gpu: str | None
    mean: dict[str, float | None] = field(default_factory=dict)
    peak: dict[str, float | None] = field(default_factory=dict)
    share: dict[str, float | None] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"rank": self.rank, "node": self.node, "samples": self.samples, "steps": self.steps, "gpu": self.gpu,
                "mean": self.mean, "max": self.peak, "share": self.share}


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def summarize(rank: int, records: Iterable[dict]) -> RankSummary:
    """Mean and max of every figure; timings are step-weighted means and the share of step time
    spent in compute (the rest), data wait, exchange and the host-to-device copy. Pure."""
    recs = list(records)
    samples = [r for r in recs if r.get("kind") == "sample"]
    starts = [r for r in recs if r.get("kind") == "start"]
    node = next((r.get("node") for r in reversed(samples + starts) if r.get("node")), None)
    gpu = starts[-1].get("gpu") if starts else None
    steps = sum(int(r.get("steps") or 0) for r in samples)
    mean: dict[str, float | None] = {}
    peak: dict[str, float | None] = {}
    timed = [r for r in samples if int(r.get("steps") or 0) > 0]
    for k in TIMINGS:
        vals = [(_num(r.get(k)), int(r["steps"])) for r in timed if _num(r.get(k)) is not None]
        n = sum(w for _, w in vals)
        mean[k] = sum(v * w for v, w in vals) / n if n else None
        peak[k] = max((v for v, _ in vals), default=None)
    for k in FIGURES:
        vals = [v for v in (_num(r.get(k)) for r in samples) if v is not None]
        mean[k] = sum(vals) / len(vals) if vals else None
        peak[k] = max(vals, default=None)
    for k in GPU_FIGURES:
        vals = [v for v in (_num((r.get("gpu") or {}).get(k)) for r in samples) if v is not None]
        mean[f"gpu_{k}"] = sum(vals) / len(vals) if vals else None
        peak[f"gpu_{k}"] = max(vals, default=None)
    share: dict[str, float | None] = {"compute": None, "data_wait": None, "exchange": None, "h2d": None}
    step = mean["step_s"]
    if step:
        wait, ex, h2d = (mean[k] or 0.0 for k in ("data_wait_s", "exchange_s", "h2d_s"))
        share = {"compute": max(0.0, step - wait - ex - h2d) / step, "data_wait": wait / step,
                 "exchange": ex / step, "h2d": h2d / step}
    return RankSummary(rank, node, len(samples), steps, gpu, mean, peak, share)


def alerts_of(data: dict[int, list[dict]]) -> list[dict]:
    """Every alert record of the run, oldest first."""
    out = [r for recs in data.values() for r in recs if r.get("kind") == "alert"]
    return sorted(out, key=lambda r: (r.get("time") or 0.0))


def status_lines(run_dir: str | Path, most_alerts: int = 5) -> list[str]:
    """``hpctrain status``: the last sample of each rank, then the newest alerts (empty without samples)."""
    data = read_samples(run_dir)
    lines = []
    for _, recs in sorted(data.items()):
        s = [r for r in recs if r.get("kind") == "sample"]
        if s:
            line = sample_line(s[-1])
            timed = [r for r in s if int(r.get("steps") or 0) and _num(r.get("step_s"))]
            if not int(s[-1].get("steps") or 0) and timed:  # evaluation, checkpointing or the end of the run
                line += f"  (last timed: {timed[-1]['step_s'] * 1e3:.1f} ms/step at step {timed[-1].get('step')})"
            lines.append(line)
    alerts = alerts_of(data)
    if len(alerts) > most_alerts:
        lines.append(f"{len(alerts)} alerts, the last {most_alerts} shown ('hpctrain monitor RUN' lists them all)")
    lines += [alert_line(a) for a in alerts[-most_alerts:]]
    return lines


def _f(v: float | None, fmt: str, scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, fmt)


def format_summary(rows: list[RankSummary]) -> str:
    """One row per rank; timings and figures as mean/max, shares of the mean step time."""
    cols = [("RANK", 4), ("NODE", 12), ("STEPS", 6), ("STEP ms", 13), ("WAIT ms", 13), ("EXCH ms", 13),
            ("COMPUTE", 7), ("WAIT", 5), ("EXCH", 5), ("CPU %", 9), ("RSS MB", 11), ("GPU %", 9), ("GPU MB", 13)]

    def line(cells: list[str]) -> str:
        return " ".join(f"{c:<{w}}" if i == 1 else f"{c:>{w}}" for i, (c, (_, w)) in enumerate(zip(cells, cols)))

    out = [line([c for c, _ in cols]),
           line(["", "", "", "mean/max", "mean/max", "mean/max", "share", "share", "share", "mean/max", "mean/max",
                 "mean/max", "mean/max"])]
    for s in rows:
        def mm(k: str, fmt: str, scale: float = 1.0, s: RankSummary = s) -> str:
            return f"{_f(s.mean.get(k), fmt, scale)}/{_f(s.peak.get(k), fmt, scale)}"
        out.append(line([str(s.rank), str(s.node or "-")[:12], str(s.steps), mm("step_s", ".1f", 1e3),
                         mm("data_wait_s", ".1f", 1e3), mm("exchange_s", ".1f", 1e3), _f(s.share["compute"], ".0%"),
                         _f(s.share["data_wait"], ".0%"), _f(s.share["exchange"], ".0%"), mm("cpu_pct", ".0f"),
                         mm("rss_mb", ".0f"), mm("gpu_util_pct", ".0f"), mm("gpu_mem_used_mb", ".0f")]))
    gpus = sorted({f"rank {s.rank}: {s.gpu}" for s in rows if s.gpu})
    if gpus:
        out.append("gpu: " + "; ".join(gpus))
    return "\n".join(out)


def sample_line(rec: dict) -> str:
    """One sample as a line (``monitor -f``, ``status``)."""
    steps = int(rec.get("steps") or 0)
    step = _num(rec.get("step_s"))
    parts = [f"rank {rec.get('rank')}", f"step {rec.get('step', '-')}"]
    if steps and step:
        wait, ex = _num(rec.get("data_wait_s")) or 0.0, _num(rec.get("exchange_s")) or 0.0
        parts.append(f"{step * 1e3:.1f} ms/step (wait {wait / step:.0%}, exchange {ex / step:.0%}, {steps} steps)")
    else:
        parts.append("no step in this sample")
    parts.append(f"cpu {_f(_num(rec.get('cpu_pct')), '.0f')}%")
    parts.append(f"rss {_f(_num(rec.get('rss_mb')), '.0f')} MB")
    gpu = rec.get("gpu")
    if gpu:
        parts.append(f"gpu {_f(_num(gpu.get('util_pct')), '.0f')}% {_f(_num(gpu.get('mem_used_mb')), '.0f')}/"
                     f"{_f(_num(gpu.get('mem_total_mb')), '.0f')} MB {_f(_num(gpu.get('temp_c')), '.0f')} C "
                     f"{_f(_num(gpu.get('power_w')), '.0f')} W")
    return "  ".join(parts)


def alert_line(rec: dict) -> str:
    return f"ALERT {rec.get('alert')}: {rec.get('message')}"


def write_timelines(run_dir: str | Path, data: dict[int, list[dict]], out: Path | None = None) -> list[Path]:
    """One PNG per rank (matplotlib Agg): utilisation, step time with its data wait and exchange,
    and memory over time. Returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hpctrain.fileio import atomic_path

    rd = RunDir(run_dir)
    out = Path(out) if out is not None else rd.monitor_plots
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for rank, recs in sorted(data.items()):
        samples = [r for r in recs if r.get("kind") == "sample" and _num(r.get("time")) is not None]
        if not samples:
            continue
        t0 = samples[0]["time"]
        t = [r["time"] - t0 for r in samples]
        fig, ax = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
        node = samples[-1].get("node")
        fig.suptitle(f"{rd.path.name}: rank {rank}" + (f" on {node}" if node else ""))
        ax[0].plot(t, [_num(r.get("cpu_pct")) for r in samples], label="CPU % (this process)")
        if any(r.get("gpu") for r in samples):
            ax[0].plot(t, [_num((r.get("gpu") or {}).get("util_pct")) for r in samples], label="GPU %")
        ax[0].set_ylabel("utilisation %")
        ax[0].legend(loc="upper right", fontsize=8)
        timed = [(x, r) for x, r in zip(t, samples) if int(r.get("steps") or 0) > 0]
        for k, label in (("step_s", "step"), ("data_wait_s", "data wait"), ("exchange_s", "exchange"),
                         ("h2d_s", "host-to-device copy")):
            ax[1].plot([x for x, _ in timed], [(_num(r.get(k)) or 0.0) * 1e3 for _, r in timed], marker=".",
                       label=label)
        ax[1].set_ylabel("ms per step")
        ax[1].legend(loc="upper right", fontsize=8)
        ax[2].plot(t, [_num(r.get("rss_mb")) for r in samples], label="host RSS MB")
        if any(r.get("gpu") for r in samples):
            ax[2].plot(t, [_num((r.get("gpu") or {}).get("mem_used_mb")) for r in samples], label="GPU memory MB")
        ax[2].set_ylabel("MB")
        ax[2].set_xlabel("seconds since the first sample")
        ax[2].legend(loc="upper right", fontsize=8)
        for a in [r for r in recs if r.get("kind") == "alert" and _num(r.get("time")) is not None]:
            for axis in ax:
                axis.axvline(a["time"] - t0, color="red", alpha=0.4, linestyle="--")
        fig.tight_layout()
        dest = out / f"rank-{rank}.png"
        with atomic_path(dest) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)
        written.append(dest)
    return written


def run_finished(run_dir: str | Path) -> bool:
    """result.json says the run ended, or (a submitted run) its journal reached a final state."""
    rd = RunDir(run_dir)
    res = rd.read_result()
    if res is not None and res.get("status"):
        return True
    if rd.events.is_file():
        from hpctrain.slurm import journal

        return journal.fold(journal.read_events(rd.path)).state in journal.TERMINAL
    return False


class Follower:
    """New complete lines of every rank's file since the last :meth:`poll` (files that appear
    later, as ranks start, are picked up)."""

    def __init__(self, run_dir: str | Path):
        self.rd = RunDir(run_dir)
        self.offsets: dict[Path, int] = {}

    def poll(self) -> list[dict]:
        out = []
        for path in self.rd.monitor_files():
            off = self.offsets.get(path, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(off)
                    chunk = f.read()
            except OSError:
                continue
            end = chunk.rfind(b"\n")
            if end < 0:
                continue  # only a partial line so far
            self.offsets[path] = off + end + 1
            out += parse_lines(chunk[:end + 1].decode("utf-8", "replace"))
        return out


def follow(run_dir: str | Path, write: Callable[[str], None], *, poll_s: float = 1.0,
           timeout_s: float | None = None, finished: Callable[[Path], bool] = run_finished,
           clock=time.monotonic, sleep=time.sleep) -> int:
    """Print every sample and alert as the files grow until the run has finished (then the rest),
    or ``timeout_s`` passed (exit 124). Ctrl-C ends it through KeyboardInterrupt (the CLI's 130)."""
    fol = Follower(run_dir)
    start = clock()
    while True:
        done = finished(Path(run_dir))  # asked before reading, so nothing written before the end is missed
        for rec in fol.poll():
            if rec["kind"] == "sample":
                write(sample_line(rec))
            elif rec["kind"] == "alert":
                write(alert_line(rec))
        if done:
            return 0
        if timeout_s is not None and clock() - start >= timeout_s:
            return 124
        sleep(poll_s)
