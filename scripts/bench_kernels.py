#!/usr/bin/env python3
"""Side-by-side benchmark of hpctrain's numba kernels against scikit-learn, numpy and torch.

Every row is measured in this one run, on this machine, with the competitors interleaved
(each repetition times every contender once; the best of the repetitions is reported).
numba compile time is excluded: every kernel is called once on a small array (a warm-up)
before any timing; ``cache=True`` then also saves later processes most of that compile.

  python scripts/bench_kernels.py                      # CPU: imputation + augmentation
  python scripts/bench_kernels.py --quick              # a small, fast smoke run
  python scripts/bench_kernels.py --gpu                # also the CUDA kernels: GB/s and the
                                                       # fraction of device-to-device copy bandwidth
  python scripts/bench_kernels.py --json out.json      # the figures as JSON too

Imputation input: rows x cols float32 with a share of NaN; fit + transform (a copy, as
sklearn returns); the median's result is compared with sklearn's byte for byte. Augmentation:
flip + crop + noise + cutout on N x 3 x 32 x 32 batches, against the fastest of three torch CPU
versions of the same operations (out of place; flip folded into a flat gather of the padded
batch; the same gather from the unpadded batch), which the script first checks give the same
output element for element under the same random draws (torch.equal), failing otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings

import numpy as np
from numba import cuda

IMPUTE_TARGET = {"mean": 8.0, "median": 10.0}
AUGMENT_TARGET = 2.0
AUG_CHAIN = [{"op": "flip", "p": 0.5}, {"op": "crop", "padding": 4}, {"op": "noise", "std": 0.1},
             {"op": "cutout", "size": 8, "p": 0.5}]


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def warm_up() -> None:
    """Compile (or load from the numba cache) every kernel the timings use."""
    from hpctrain.kernels.impute import Imputer, fit_statistics
    from hpctrain.kernels.pipeline import build_pipeline

    x = np.random.default_rng(0).random((64, 4), dtype=np.float32)
    x[::3, 1] = np.nan
    for s in ("mean", "median"):
        Imputer(s).fit_transform(x)
        fit_statistics(lambda: [x], 4, s)
    p = build_pipeline(AUG_CHAIN, 0)
    p(np.zeros((4, 3, 8, 8), np.float32))


def bench_impute(rows: int, cols: int, nan: float, repeat: int) -> list[dict]:
    from sklearn.impute import SimpleImputer

    from hpctrain.kernels.impute import Imputer

    rng = np.random.default_rng(0)
    x = rng.random((rows, cols), dtype=np.float32)
    x[rng.random(x.shape) < nan] = np.nan
    out = []
    for strategy in ("mean", "median"):
        t_sk, t_np, t_ours = [], [], []
        res = {}
        nan_stat = np.nanmean if strategy == "mean" else np.nanmedian

        def run_sklearn(s=strategy):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return SimpleImputer(strategy=s).fit_transform(x)

        def run_numpy(f=nan_stat):
            return np.where(np.isnan(x), f(x, axis=0).astype(np.float32), x)

        def run_ours(s=strategy):
            return Imputer(s).fit_transform(x)

        for _ in range(repeat):
            for key, fn, times in (("sk", run_sklearn, t_sk), ("np", run_numpy, t_np), ("ours", run_ours, t_ours)):
                t0 = time.perf_counter()
                res[key] = fn()
                times.append(time.perf_counter() - t0)
        sk, ours = res["sk"], res["ours"]
        if strategy == "mean":
            exact = np.where(np.isnan(x), np.nanmean(x.astype(np.float64), axis=0), x).astype(np.float32)
            with np.errstate(invalid="ignore", divide="ignore"):
                rel_sk = float(np.nanmax(np.abs(ours - sk) / np.abs(sk)))
                rel_exact = float(np.nanmax(np.abs(ours - exact) / np.abs(exact)))
                rel_sk_exact = float(np.nanmax(np.abs(sk - exact) / np.abs(exact)))
            equal = {"max_rel_diff_vs_sklearn": rel_sk, "max_rel_diff_vs_float64_exact": rel_exact,
                     "sklearn_max_rel_diff_vs_float64_exact": rel_sk_exact}
        else:
            equal = {"equal_to_sklearn": ours.tobytes() == sk.tobytes()}  # bytes: tells -0.0 from +0.0
        row = {"bench": f"impute {strategy}", "shape": [rows, cols], "nan_share": nan,
               "sklearn_s": min(t_sk), "numpy_s": min(t_np), "hpctrain_s": min(t_ours),
               "speedup_vs_sklearn": min(t_sk) / min(t_ours), "speedup_vs_numpy": min(t_np) / min(t_ours),
               "target": IMPUTE_TARGET[strategy], **equal}
        out.append(row)
    return out


def torch_chain(x, g):
    """flip + crop (zero padding) + noise + cutout with vectorised torch CPU ops, each step out of
    place, as the operations read one by one. The reference for the faster versions below."""
    import torch
    import torch.nn.functional as F

    n, c, h, w = x.shape
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    xp = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=g)
    dx = torch.randint(0, 9, (n,), generator=g)
    rows = dy[:, None] + torch.arange(h)
    cols = dx[:, None] + torch.arange(w)
    x = xp[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
           rows[:, None, :, None], cols[:, None, None, :]]
    x = x + 0.1 * torch.randn(x.shape, generator=g)
    cy = torch.randint(0, h, (n,), generator=g)
    cx = torch.randint(0, w, (n,), generator=g)
    on = torch.rand(n, generator=g) < 0.5
    ys, xs = torch.arange(h), torch.arange(w)
    my = (ys[None] >= (cy - 4)[:, None]) & (ys[None] < (cy + 4)[:, None])
    mx = (xs[None] >= (cx - 4)[:, None]) & (xs[None] < (cx + 4)[:, None])
    m = my[:, :, None] & mx[:, None, :] & on[:, None, None]
    return x.masked_fill(m[:, None], 0.0)


def _cutout_(out, g):
    """Cutout in place, with the reference's draws (centre y, centre x, on) in its order."""
    import torch

    n, _, h, w = out.shape
    cy = torch.randint(0, h, (n,), generator=g)
    cx = torch.randint(0, w, (n,), generator=g)
    on = torch.rand(n, generator=g) < 0.5
    ys, xs = torch.arange(h), torch.arange(w)
    my = (ys[None] >= (cy - 4)[:, None]) & (ys[None] < (cy + 4)[:, None]) & on[:, None]
    mx = (xs[None] >= (cx - 4)[:, None]) & (xs[None] < (cx + 4)[:, None])
    return out.masked_fill_((my[:, :, None] & mx[:, None, :])[:, None], 0.0)


def _noise_(out, g):
    import torch

    noise = torch.randn(out.shape, generator=g)
    noise.mul_(0.1)  # the same two roundings as x + 0.1 * randn
    return out.add_(noise)


def torch_gather_padded(x, g):
    """The same output, faster: the flip folded into the crop's column index, the crop one flat
    ``gather`` of the padded batch, noise and cutout in place."""
    import torch
    import torch.nn.functional as F

    n, c, h, w = x.shape
    flip = torch.rand(n, generator=g) < 0.5
    dy = torch.randint(0, 9, (n,), generator=g)
    dx = torch.randint(0, 9, (n,), generator=g)
    xp = F.pad(x, (4, 4, 4, 4))
    j = torch.arange(w)
    cols = torch.where(flip[:, None], (w + 7 - dx)[:, None] - j, dx[:, None] + j)  # flipped: read mirrored
    rows = dy[:, None] + torch.arange(h)
    sp = (rows[:, :, None] * (w + 8) + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    out = xp.reshape(n, c, -1).gather(2, sp).reshape(n, c, h, w)
    return _cutout_(_noise_(out, g), g)


def torch_gather_clamped(x, g):
    """The same output without the padded copy: gather from the input at clamped indices, then
    zero the pixels that fall in the padding (before the noise, as the reference pads zeros)."""
    import torch

    n, c, h, w = x.shape
    flip = torch.rand(n, generator=g) < 0.5
    dy = torch.randint(0, 9, (n,), generator=g)
    dx = torch.randint(0, 9, (n,), generator=g)
    j = torch.arange(w)
    cols = torch.where(flip[:, None], (w + 3 - dx)[:, None] - j, dx[:, None] - 4 + j)  # unpadded coordinates
    rows = dy[:, None] - 4 + torch.arange(h)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    sp = (rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]).reshape(n, 1, h * w)
    out = x.reshape(n, c, -1).gather(2, sp.expand(n, c, h * w)).reshape(n, c, h, w)
    out.masked_fill_(~inside[:, None], 0.0)
    return _cutout_(_noise_(out, g), g)


TORCH_PEERS = {"out of place": torch_chain, "gather, padded": torch_gather_padded,
               "gather, clamped": torch_gather_clamped}


def check_torch_peers(x) -> None:
    """Every torch version gives the reference's output, element for element, under the same draws."""
    import torch

    ref = torch_chain(x, torch.Generator().manual_seed(123))
    for name, fn in TORCH_PEERS.items():
        got = fn(x, torch.Generator().manual_seed(123))
        if not torch.equal(got, ref):
            raise SystemExit(f"bench: torch peer {name!r} differs from the reference chain "
                             f"({int((got != ref).sum())} elements); fix it before timing anything")


def bench_augment(n: int, repeat: int) -> list[dict]:
    import numba
    import torch

    from hpctrain.kernels.pipeline import build_pipeline

    torch.set_num_threads(numba.get_num_threads())  # same cores for both
    x = np.random.default_rng(1).random((n, 3, 32, 32), dtype=np.float32)
    xt = torch.from_numpy(x)
    g = torch.Generator().manual_seed(0)
    check_torch_peers(xt[:256])
    for fn in TORCH_PEERS.values():
        fn(xt[:8], g)
    fused = build_pipeline(AUG_CHAIN, 0)
    single = build_pipeline(AUG_CHAIN, 0)
    single.fuse = False
    single(x[:8])
    t_peer: dict[str, list[float]] = {k: [] for k in TORCH_PEERS}
    t_f, t_s = [], []
    for _ in range(repeat):
        for name, fn in TORCH_PEERS.items():
            t_peer[name].append(_time(lambda fn=fn: fn(xt, g)))
        t_f.append(_time(lambda: fused(x)))
        t_s.append(_time(lambda: single(x)))
    best = {k: min(v) for k, v in t_peer.items()}
    strongest = min(best, key=best.get)
    return [{"bench": "augment flip+crop+noise+cutout", "shape": [n, 3, 32, 32], "torch_s": best[strongest],
             "torch_peer": strongest, "torch_peers_s": best,
             "hpctrain_fused_s": min(t_f), "hpctrain_unfused_s": min(t_s),
             "speedup_vs_torch": best[strongest] / min(t_f), "speedup_unfused_vs_torch": best[strongest] / min(t_s),
             "target": AUGMENT_TARGET, "threads": numba.get_num_threads()}]


def _reference_noise_kernel():
    # Module-level ``cuda``: the simulator swaps a kernel's global ``cuda`` for its own.
    from numba.cuda.random import xoroshiro128p_normal_float32

    @cuda.jit
    def noise(x, out, apply, mean, std, states):
        n, m = x.shape
        tid = cuda.grid(1)
        e = tid
        while e < n * m:
            s = e // m
            k = e - s * m
            v = x[s, k]
            if apply[s]:
                v += mean + std * xoroshiro128p_normal_float32(states, tid)
            out[s, k] = v
            e += cuda.gridsize(1)

    return noise


def bench_gpu(rows: int, cols: int, nan: float, n_img: int, repeat: int, copy_mib: int) -> tuple[dict, list[dict]]:
    """Device kernels in GB/s, counting bytes like a copy (read + write = 2 x the array size),
    against the measured device-to-device copy bandwidth. Outputs and per-sample parameters
    are on the device before timing, so a row times the kernel alone (CUDA events)."""
    from hpctrain.kernels import _cuda_common as C
    from hpctrain.kernels._cuda_impute import fill_kernel
    from hpctrain.kernels.impute import Imputer
    from hpctrain.kernels.pipeline import build_pipeline

    if C.SIMULATOR:  # a smoke run of this code path; its figures mean nothing
        name = "numba CUDA simulator (figures meaningless)"
    else:
        name = cuda.get_current_device().name
        name = name.decode() if isinstance(name, bytes) else str(name)

    def event_time(fn) -> float:
        start, stop = cuda.event(), cuda.event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return max(start.elapsed_time(stop) / 1e3, 1e-9)  # the simulator reports 0

    def timed(fn) -> float:
        fn()  # warm-up: compile, first-touch
        cuda.synchronize()
        return min(event_time(fn) for _ in range(repeat))

    nbytes = copy_mib << 20
    src_buf = cuda.device_array(nbytes // 4, dtype=np.float32)
    dst_buf = cuda.device_array(nbytes // 4, dtype=np.float32)
    t_copy = timed(lambda: dst_buf.copy_to_device(src_buf))
    copy_gbs = 2 * nbytes / t_copy / 1e9
    src_buf = dst_buf = None  # free them before the kernels run
    rows_out = []

    rng = np.random.default_rng(0)
    x = rng.random((rows, cols), dtype=np.float32)
    x[rng.random(x.shape) < nan] = np.nan
    imp = Imputer("mean").fit(x)
    expected = imp.transform(x.copy())
    src = cuda.to_device(x)
    work = cuda.device_array_like(src)
    full = cuda.to_device(imp.statistics_.astype(np.float32))
    blocks, threads = C.row_launch(rows, cols)
    times = []
    for _ in range(repeat + 1):  # restore the NaNs (untimed) before each timed in-place fill
        work.copy_to_device(src)
        cuda.synchronize()
        times.append(event_time(lambda: fill_kernel[blocks, threads](work, work, full, False)))
    best = min(times[1:]) if len(times) > 1 else times[0]
    ok = work.copy_to_host().tobytes() == expected.tobytes()
    # In place, only the 32-byte sectors holding a NaN are written back; the copy row below
    # moves exactly read + write bytes, like the copy it is compared with.
    gbs = 2 * x.nbytes / best / 1e9
    rows_out.append({"kernel": "impute transform (in place)", "shape": [rows, cols], "seconds": best, "GB_s": gbs,
                     "fraction_of_copy": gbs / copy_gbs, "equal_to_cpu": ok})
    t = timed(lambda: fill_kernel[blocks, threads](src, work, full, True))
    ok = work.copy_to_host().tobytes() == expected.tobytes()
    gbs = 2 * x.nbytes / t / 1e9
    rows_out.append({"kernel": "impute transform (copy)", "shape": [rows, cols], "seconds": t, "GB_s": gbs,
                     "fraction_of_copy": gbs / copy_gbs, "equal_to_cpu": ok})
    src = work = None

    img = cuda.to_device(np.random.default_rng(1).random((n_img, 3, 32, 32), dtype=np.float32))
    out = cuda.device_array_like(img)
    for entry in ({"op": "noise", "std": 0.1}, {"op": "flip", "p": 0.5}, {"op": "crop", "padding": 4},
                  {"op": "cutout", "size": 8, "p": 0.5}):
        p = build_pipeline([entry], 0)
        p(img[:1])  # creates the pipeline's CUDA context (xoroshiro states)
        op = p.ops[0]
        prm = {k: cuda.to_device(v) if isinstance(v, np.ndarray) else v
               for k, v in op.draw(p.rng, tuple(img.shape), None).items()}
        t = timed(lambda op=op, prm=prm, ctx=p._cuda: op.cuda(img, out, prm, None, ctx))
        gbs = 2 * img.nbytes / t / 1e9
        rows_out.append({"kernel": f"augment {entry['op']}", "shape": list(img.shape), "seconds": t, "GB_s": gbs,
                         "fraction_of_copy": gbs / copy_gbs})
        if entry["op"] == "noise":
            # The same noise with numba.cuda.random's per-draw global-memory state updates (the
            # design the kernel replaced), timed in this run for the comparison.
            ref = _reference_noise_kernel()
            t = timed(lambda prm=prm, ctx=p._cuda, ref=ref: ref[ctx.noise(img.size)](
                img.reshape(img.shape[0], -1), out.reshape(out.shape[0], -1), prm["apply"],
                np.float32(0.0), np.float32(0.1), ctx.states))
            gbs = 2 * img.nbytes / t / 1e9
            rows_out.append({"kernel": "reference: numba-random noise", "shape": list(img.shape), "seconds": t,
                             "GB_s": gbs, "fraction_of_copy": gbs / copy_gbs})
    return {"device": name, "copy_GB_s": copy_gbs, "copy_MiB": copy_mib}, rows_out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--cols", type=int, default=32)
    ap.add_argument("--nan", type=float, default=0.1)
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=2, help="repetitions per contender (best is reported)")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not a measurement")
    ap.add_argument("--gpu", action="store_true", help="also run the CUDA kernels (needs a CUDA device)")
    ap.add_argument("--gpu-only", action="store_true", help="only the CUDA kernels")
    ap.add_argument("--copy-mib", type=int, default=1024, help="size of the device-to-device copy (MiB)")
    ap.add_argument("--gpu-rows", type=int, default=None, help="rows of the device imputation (default --rows)")
    ap.add_argument("--json", default=None, help="write the figures here too")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.images = 100_000, 256

    import numba

    report: dict = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "numba_threads": numba.get_num_threads(),
                                "python": sys.version.split()[0], "numba": numba.__version__},
                    "note": "numba compile time excluded (warm-up call before timing); best of --repeat"}
    print(f"# machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
          f"numba {numba.__version__} with {numba.get_num_threads()} threads")
    print("# numba compile time is excluded: every kernel ran once (warm-up) before timing")
    load = os.getloadavg()[0]
    report["machine"]["load_average_1min_at_start"] = load
    print(f"# load average (1 min) at start: {load:.2f} on {os.cpu_count()} cores"
          + ("  -- the machine is busy: CPU timings are noisy" if load > 0.5 * (os.cpu_count() or 1) else ""))
    t = time.perf_counter()
    warm_up()
    print(f"# warm-up (compile or cache load): {time.perf_counter() - t:.1f} s")

    if not args.gpu_only:
        imp = bench_impute(args.rows, args.cols, args.nan, args.repeat)
        aug = bench_augment(args.images, max(args.repeat, 3))
        report["impute"], report["augment"] = imp, aug
        print(f"\n{'benchmark':<34}{'sklearn s':>11}{'numpy s':>10}{'hpctrain s':>12}{'x sklearn':>11}"
              f"{'x numpy':>9}{'target':>8}  result check")
        for r in imp:
            check = (f"equal to sklearn byte for byte: {r['equal_to_sklearn']}" if "equal_to_sklearn" in r else
                     f"max rel diff vs sklearn {r['max_rel_diff_vs_sklearn']:.1e}, vs float64 exact "
                     f"{r['max_rel_diff_vs_float64_exact']:.1e} (sklearn vs exact "
                     f"{r['sklearn_max_rel_diff_vs_float64_exact']:.1e})")
            print(f"{r['bench'] + ' {}x{}'.format(*r['shape']):<34}{r['sklearn_s']:>11.3f}{r['numpy_s']:>10.3f}"
                  f"{r['hpctrain_s']:>12.3f}{r['speedup_vs_sklearn']:>10.1f}x{r['speedup_vs_numpy']:>8.1f}x"
                  f"{r['target']:>7.0f}x  {'met' if r['speedup_vs_sklearn'] >= r['target'] else 'NOT met'}; {check}")
        for r in aug:
            peers = ", ".join(f"{k} {v:.3f} s" for k, v in r["torch_peers_s"].items())
            print(f"\ntorch versions (all equal to the reference under the same draws, checked with torch.equal): "
                  f"{peers}; the fastest, {r['torch_peer']!r}, is the peer")
        print(f"{'benchmark':<44}{'torch s':>9}{'fused s':>9}{'unfused s':>11}{'x torch':>9}{'target':>8}")
        for r in aug:
            verdict = "met" if r["speedup_vs_torch"] >= r["target"] else "NOT met"
            print(f"{r['bench'] + ' N={}'.format(r['shape'][0]):<44}{r['torch_s']:>9.3f}{r['hpctrain_fused_s']:>9.3f}"
                  f"{r['hpctrain_unfused_s']:>11.3f}{r['speedup_vs_torch']:>8.1f}x{r['target']:>7.0f}x  {verdict}")

    if args.gpu or args.gpu_only:
        rows = args.gpu_rows or (2_000_000 if args.quick else args.rows)
        n_img = 4096 if args.quick else args.images
        info, gpu = bench_gpu(rows, args.cols, args.nan, n_img,
                              max(args.repeat, 5), args.copy_mib)
        report["gpu"] = {**info, "kernels": gpu}
        print(f"\n# device: {info['device']}; device-to-device copy: {info['copy_GB_s']:.0f} GB/s "
              "(bytes read + written)")
        print(f"{'kernel':<34}{'shape':<22}{'ms':>9}{'GB/s':>9}{'of copy':>9}")
        for r in gpu:
            print(f"{r['kernel']:<34}{'x'.join(map(str, r['shape'])):<22}{r['seconds'] * 1e3:>9.3f}"
                  f"{r['GB_s']:>9.0f}{r['fraction_of_copy']:>8.0%}" + ("" if r.get("equal_to_cpu", True) else
                                                                        "  MISMATCH vs CPU"))
    report["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]
    print(f"\n# load average (1 min) at end: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
