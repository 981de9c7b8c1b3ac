"""``run_farm``: the whole farm on every rank (or in one process), from options to summary.

Phases, each collective on every rank so no rank can wait alone:
1. rank 0 validates options and the task file and reads the journal, then broadcasts
   either "go" or the error (workers then exit quietly; rank 0 raises it);
2. ranks exchange node names and each worker computes the resources it advertises;
3. rank 0 dispatches and journals, the others work; rank 0 prints the summary.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from hpctrain.errors import HpctrainError
from hpctrain.farm import journal
from hpctrain.farm.loop import STOPPED_PEERS_LOST, LoopOptions, dispatch, install_stop_handlers, work
from hpctrain.farm.progress import Progress, summary_table
from hpctrain.farm.resources import advertise, node_cpus, node_memory_gb, parse_per_worker
from hpctrain.farm.scheduler import Scheduler
from hpctrain.farm.tasks import FarmError, check_seconds, parse_tasks
from hpctrain.fileio import atomic_write_json

ALERTS = "alerts.jsonl"  # the dispatcher's alerts (a worker idle while tasks wait), one JSON line each


@dataclass(kw_only=True, slots=True)
class FarmConfig:
    tasks: Path = field(metadata={"help": "the JSONL task file"})
    out: Path = field(metadata={"help": "results directory (journal.jsonl, tasks/<id>/, summary.json)"})
    # hpctrain farm's flags are generated from these fields (hpctrain.config.add_flags): the
    # defaults and help texts below are the only ones
    retries: int = field(default=2, metadata={"help": "retries after a failed first attempt"})
    timeout: float | None = field(default=None, metadata={
        "help": "seconds per attempt; the task's process group is killed", "default_text": "none"})
    backoff: float = field(default=1.0, metadata={"help": "first retry delay in s, doubled per retry"})
    backoff_max: float = field(default=60.0, metadata={"help": "cap of the retry delay in s"})
    workers_per_node: int | None = field(default=None, metadata={
        "help": "split each node's cpus/gpus/memory among K workers", "default_text": "worker ranks on the node"})
    cpus_per_worker: str | None = field(default=None, metadata={
        "help": "override: N, or N1,N2,... per worker in rank order"})
    gpus_per_worker: str | None = field(default=None, metadata={"help": "override: N, or a comma list"})
    mem_per_worker: str | None = field(default=None, metadata={"help": "override in GB: N, or a comma list"})
    max_tasks_per_worker: int = field(default=32, metadata={"help": "cap on one worker's concurrent tasks"})
    heartbeat: float = field(default=60.0, metadata={"help": "seconds of silence before a rank is declared lost"})
    kill_grace: float = field(default=2.0, metadata={"help": "seconds from SIGTERM to SIGKILL on timeout"})
    skip_failed: bool = field(default=False, metadata={"help": "on restart, skip tasks that already failed too"})
    local_workers: int = field(default=1, metadata={"help": "worker threads when not started by mpirun/srun"})
    progress: bool = field(default=True, metadata={"help": "the live progress line on rank 0 (--no-progress: none)"})

    def __post_init__(self):
        for name in ("retries", "max_tasks_per_worker", "local_workers"):
            if getattr(self, name) < (0 if name == "retries" else 1):
                raise FarmError(f"--{name.replace('_', '-')} must be >= {0 if name == 'retries' else 1}, "
                                f"got {getattr(self, name)}")
        # NaN passes every '< 0' test and then never compares true: a NaN backoff left a retry
        # waiting forever, a NaN timeout or heartbeat silently meant "none". inf is refused too:
        # each of these is a delay or a limit that has to end.
        for name in ("backoff", "backoff_max", "kill_grace"):
            check_seconds(f"--{name.replace('_', '-')}", getattr(self, name), allow_zero=True)
        if self.timeout is not None:
            check_seconds("--timeout", self.timeout, hint="leave --timeout out for no limit")
        check_seconds("--heartbeat", self.heartbeat)
        if self.workers_per_node is not None and self.workers_per_node < 1:
            raise FarmError(f"--workers-per-node must be >= 1, got {self.workers_per_node}")
        parse_per_worker(self.cpus_per_worker, "--cpus-per-worker")
        parse_per_worker(self.gpus_per_worker, "--gpus-per-worker")
        parse_per_worker(self.mem_per_worker, "--mem-per-worker", float)


@dataclass(slots=True)
class FarmReport:
    rows: list[dict]
    skipped: int
    makespan_s: float
    lost_workers: list[int]
    interrupted: bool

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["state"] == "failed"]

    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed else 0


def _prepare(cfg: FarmConfig):
    tasks = parse_tasks(cfg.tasks)
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
        probe = cfg.out / ".farm-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise FarmError(f"--out {str(cfg.out)!r} is not a writable directory ({e.strerror}); "
                        "pass a directory on a shared file system that every node can write") from None
    done = journal.already_done(tasks, journal.load(cfg.out), skip_failed=cfg.skip_failed)
    return tasks, done


def _resources(cfg: FarmConfig, workers_on_node: int, index_on_node: int, worker_index: int):
    return advertise(env=os.environ, node_cpus=node_cpus(), node_mem_gb=node_memory_gb(),
                     workers_on_node=cfg.workers_per_node or workers_on_node, index_on_node=index_on_node,
                     worker_index=worker_index, cpus=parse_per_worker(cfg.cpus_per_worker, "--cpus-per-worker"),
                     gpus=parse_per_worker(cfg.gpus_per_worker, "--gpus-per-worker"),
                     mem_gb=parse_per_worker(cfg.mem_per_worker, "--mem-per-worker", float))


def _dispatch_and_report(ep, cfg: FarmConfig, tasks, done: set, caps: dict, stop: threading.Event,
                         stream) -> FarmReport:
    todo = [t for t in tasks if t.id not in done]
    sched = Scheduler(todo, retries=cfg.retries, backoff=cfg.backoff, backoff_max=cfg.backoff_max)
    for wid, (res, gpu_ids) in caps.items():
        sched.add_worker(wid, res, gpu_ids=tuple(gpu_ids), max_tasks=cfg.max_tasks_per_worker)
    workers_desc = ", ".join(f"{w}: {r.describe()}" for w, (r, _) in sorted(caps.items()))
    print(f"farm: {len(todo)} task(s) to run, {len(done)} already done (journal); "
          f"{len(caps)} worker(s) [{workers_desc}]", file=stream, flush=True)
    prog = Progress(len(todo), stream=stream) if cfg.progress and todo else None
    def alert(al) -> None:
        from hpctrain.fileio import append_jsonl

        print(f"farm: warning: {al.message}", file=stream, flush=True)
        append_jsonl(cfg.out / ALERTS, {**al.as_record(), "time": round(time.time(), 3)}, fsync=False)

    opts = LoopOptions(out=cfg.out, timeout=cfg.timeout, kill_grace=cfg.kill_grace, heartbeat=cfg.heartbeat,
                       progress=prog, stop_flag=stop, alert=alert)
    res = dispatch(ep, sched, opts)
    if prog:
        prog.close()
    rows = []
    for tid, st in sched.states.items():
        if st.state in ("succeeded", "failed"):
            last = st.attempts[-1] if st.attempts else None
            rows.append({"id": tid, "state": st.state, "attempts": len([a for a in st.attempts if a.attempt > 0]),
                         "worker": last.worker if last else None, "error": last.error if last else ""})
    report = FarmReport(rows=rows, skipped=len(done), makespan_s=res.makespan_s, lost_workers=res.lost_workers,
                        interrupted=res.interrupted)
    atomic_write_json(cfg.out / "summary.json", {
        "total": len(tasks), "skipped": len(done), "succeeded": sum(r["state"] == "succeeded" for r in rows),
        "failed": sum(r["state"] == "failed" for r in rows), "makespan_s": round(res.makespan_s, 4),
        "lost_workers": res.lost_workers, "interrupted": res.interrupted, "tasks": rows})
    print(summary_table(rows, skipped=len(done), makespan_s=res.makespan_s, lost_workers=res.lost_workers),
          file=stream, flush=True)
    if res.interrupted:
        print(f"farm: interrupted; {len(rows)} task(s) reached an end state and are journaled. "
              "Run the same command again to resume.", file=stream, flush=True)
    return report


def run_local(cfg: FarmConfig, stream=None) -> FarmReport:
    """The farm in one process: the dispatcher here, ``local_workers`` worker threads."""
    from hpctrain.farm.mpi import LocalHub

    stream = stream or sys.stderr
    tasks, done = _prepare(cfg)
    n = cfg.local_workers
    hub = LocalHub(n)
    stop = threading.Event()
    undo = install_stop_handlers(stop)
    caps = {w: _resources(cfg, n, w - 1, w - 1) for w in range(1, n + 1)}
    opts = LoopOptions(out=cfg.out, timeout=cfg.timeout, kill_grace=cfg.kill_grace, heartbeat=cfg.heartbeat,
                       stop_flag=stop, max_tasks=cfg.max_tasks_per_worker)
    threads = [threading.Thread(target=work, args=(hub.endpoint(w), w, opts), daemon=True, name=f"farm-worker-{w}")
               for w in caps]
    for t in threads:
        t.start()
    try:
        return _dispatch_and_report(hub.endpoint(0), cfg, tasks, done, caps, stop, stream)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
        undo()


def run_mpi(cfg: FarmConfig, stream=None) -> FarmReport | None:
    """The farm on every rank of COMM_WORLD. Rank 0 returns the report, workers None."""
    from mpi4py import MPI

    from hpctrain.comm.failfast import fail
    from hpctrain.comm.mpi import MpiComm
    from hpctrain.farm.mpi import DISPATCHER_MAX_SLEEP, MpiEndpoint

    stream = stream or sys.stderr
    comm = MpiComm(MPI.COMM_WORLD)  # the collectives; the task messages are point-to-point (MpiEndpoint)
    rank, size = comm.rank, comm.size
    if size < 2:
        return run_local(cfg, stream)
    tasks = done = None
    err: str | None = None
    if rank == 0:
        try:
            tasks, done = _prepare(cfg)
        except HpctrainError as e:
            err = str(e)
        except Exception as e:  # noqa: BLE001 - the workers wait in bcast: they must hear of it
            traceback.print_exc()
            err = f"rank 0 failed while reading the task list or journal: {type(e).__name__}: {e}"
    err = comm.broadcast(err)
    if err is not None:
        if rank == 0:
            raise FarmError(err)
        return None
    node = os.environ.get("SLURMD_NODENAME") or MPI.Get_processor_name()
    nodes = comm.allgather(node)
    worker_ranks = list(range(1, size))
    mine = None
    if rank > 0:
        same = [r for r in worker_ranks if nodes[r] == node]
        try:
            mine = _resources(cfg, len(same), same.index(rank), rank - 1)
        except Exception as e:  # noqa: BLE001 - reported by rank 0, never a lone hang
            mine = e
    caps = comm.gather(mine)
    stop = threading.Event()
    undo = install_stop_handlers(stop)
    ep = MpiEndpoint(comm.comm, max_sleep=DISPATCHER_MAX_SLEEP if rank == 0 else 2e-3)
    try:
        if rank == 0:
            bad = [(r, c) for r, c in enumerate(caps) if r > 0 and isinstance(c, Exception)]
            if bad:
                for r in range(1, size):
                    ep.send(r, ("stop",))
                ep.flush()
                raise FarmError(f"worker rank {bad[0][0]} could not size its resources: {bad[0][1]}")
            report = _dispatch_and_report(ep, cfg, tasks, done, {r: caps[r] for r in range(1, size)}, stop, stream)
            if report.interrupted:
                for r in range(1, size):
                    ep.send(r, ("stop",))
            if report.lost_workers:
                _goodbye(ep, live={r for r in range(1, size)} - set(report.lost_workers))
                _exit_without_finalize(report.exit_code())
            ep.flush()
            return report
        rc = work(ep, rank, LoopOptions(out=cfg.out, timeout=cfg.timeout, kill_grace=cfg.kill_grace,
                                        heartbeat=cfg.heartbeat, stop_flag=stop, max_tasks=cfg.max_tasks_per_worker))
        if rc == STOPPED_PEERS_LOST:
            ep.send(0, ("bye",))
            ep.flush(timeout=5.0)
            _exit_without_finalize(0)
        if rc == 3:
            print(f"farm worker rank {rank}: the dispatcher (rank 0) was silent for {cfg.heartbeat:g} s; "
                  "stopping", file=sys.stderr, flush=True)
            _exit_without_finalize(3)  # rank 0 is gone or stuck: Finalize would wait for it
        ep.flush()
        return None
    except HpctrainError:
        raise
    except Exception as e:
        # Abort, never hang: a bug on one rank must take the job down, not leave the others waiting.
        fail(e, rank)
    finally:
        undo()


def _goodbye(ep, live: set[int], timeout: float = 5.0) -> None:
    """Wait (bounded) until each live worker confirmed 'stop', so none is left waiting for it."""
    deadline = time.monotonic() + timeout
    while live and time.monotonic() < deadline:
        for src, msg in ep.poll(0.1):
            if msg[0] == "bye":
                live.discard(src)


def _exit_without_finalize(code: int) -> None:
    """Leave without MPI_Finalize once a rank has died (only possible under --enable-recovery).

    Finalize synchronises with every rank, the dead one included; under load it was seen to
    hang there after the farm had finished (1 run in ~15). Everything that matters (journal,
    results, summary) is already on disk. Note that mpirun --enable-recovery exits 0 whatever
    the ranks return, so summary.json, not the exit code, tells whether tasks failed.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_farm(cfg: FarmConfig, stream=None) -> FarmReport | None:
    """Run under MPI when started by a launcher (mpirun/srun), else in this process."""
    from hpctrain.env import rank_info

    if rank_info().launcher == "single":
        return run_local(cfg, stream)
    return run_mpi(cfg, stream)
