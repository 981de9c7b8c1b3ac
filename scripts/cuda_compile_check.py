#!/usr/bin/env python3
"""Compile every hpctrain CUDA kernel to PTX for a real GPU architecture, on a machine with no GPU.

The numba CUDA simulator (the cudasim tests) runs kernels as Python: it never types them the
way numba's CUDA target does, so a kernel can pass there and still fail to compile on a
device (integer/float promotion, tuple returns, record access, an unsupported call). This
check runs numba-cuda's real front end and NVVM for each kernel with the argument types the
callers launch it with, so such an error shows in CI rather than in a rare, short GPU lease.

Needs numba-cuda and NVVM/NVRTC (wheels; no driver, no GPU): scripts/cuda-compile-check.sh
builds a separate cached venv with them and runs this. Every ``@cuda.jit`` kernel of the
kernel modules must have a signature below: a new kernel without one fails the check.

  python scripts/cuda_compile_check.py [--cc 9.0] [--junitxml out.xml]
"""

from __future__ import annotations

import argparse
import sys
import time
import xml.etree.ElementTree as ET

MODULES = ("hpctrain.kernels._cuda_augment", "hpctrain.kernels._cuda_impute")


def _pretend_device(cc: tuple[int, int]) -> None:
    """numba-cuda asks the current device for its compute capability when a kernel calls a
    device function (``compile_device``), even under ``compile_ptx(cc=...)``; without a
    driver that raises. Answer with the target architecture instead."""
    import numba.cuda.dispatcher as dispatcher

    class _Device:
        compute_capability = cc

    dispatcher.get_current_device = lambda: _Device()


def signatures() -> dict[str, tuple]:
    """Argument types per kernel, as the launches in kernels/ pass them (C-contiguous arrays)."""
    from numba import types as T
    from numba.cuda.random import xoroshiro128p_dtype
    from numba.np.numpy_support import from_dtype

    states = T.Array(from_dtype(xoroshiro128p_dtype), 1, "C")
    f1, f2, f4 = T.float32[::1], T.float32[:, ::1], T.float32[:, :, :, ::1]
    u1, i1 = T.uint8[::1], T.int64[::1]
    return {
        "_cuda_augment.flip_kernel": (f4, f4, u1, u1),
        "_cuda_augment.crop_kernel": (f4, f4, i1, i1, T.int64),
        "_cuda_augment.gaussian_kernel": (f2, f2, u1, T.float32, T.float32, states),
        "_cuda_augment.salt_pepper_kernel": (f2, f2, u1, T.float32, T.float32, T.float32, states),
        "_cuda_augment.cutout_kernel": (f4, f4, i1, i1, i1, i1, T.float32),
        "_cuda_augment.jitter_kernel": (f2, f2, f1, f1),
        "_cuda_augment.mixup_kernel": (f2, f2, i1, f1),
        "_cuda_augment.column_std_kernel": (f2, f1),
        "_cuda_augment.tabular_noise_kernel": (f2, f2, u1, f1, T.float32, states),
        "_cuda_augment.smote_kernel": (f2, f2, i1, u1, f1, i1, T.int64),
        "_cuda_impute.fill_kernel": (f2, f2, f1, T.boolean),
        "_cuda_impute.fill_select_kernel": (f2, f2, i1, f1, i1),
    }


def kernels() -> dict[str, object]:
    """Every kernel (not device function) defined in the kernel modules, by 'module.name'."""
    import importlib

    found = {}
    for modname in MODULES:
        mod = importlib.import_module(modname)
        for name, obj in vars(mod).items():
            opts = getattr(obj, "targetoptions", None)
            if opts is None or getattr(obj, "py_func", None) is None or obj.py_func.__module__ != modname:
                continue
            if not opts.get("device", False):
                found[f"{modname.rsplit('.', 1)[1]}.{name}"] = obj
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cc", default="9.0", help="compute capability to compile for (default 9.0: H100/H200)")
    ap.add_argument("--junitxml", default=None, help="also write the results as a JUnit XML report")
    args = ap.parse_args(argv)
    try:
        cc = tuple(int(p) for p in args.cc.split("."))
        assert len(cc) == 2
    except (ValueError, AssertionError):
        ap.error(f"--cc {args.cc!r}: expected MAJOR.MINOR, e.g. 9.0")

    from numba import config, cuda

    if config.ENABLE_CUDASIM:
        print("cuda_compile_check: NUMBA_ENABLE_CUDASIM=1 is set; this check needs the real CUDA target",
              file=sys.stderr)
        return 2
    _pretend_device(cc)
    sigs, found = signatures(), kernels()
    results = []
    for name in sorted(set(sigs) | set(found)):
        t0 = time.perf_counter()
        if name not in sigs:
            err = f"no signature: add this kernel's launch types to signatures() in {__file__}"
        elif name not in found:
            err = "listed in signatures() but no such kernel: remove it there"
        else:
            k = found[name]
            try:
                ptx, _ = cuda.compile_ptx(k.py_func, sigs[name], cc=cc, fastmath=k.targetoptions.get("fastmath", False))
                err = None if ".entry" in ptx else "NVVM returned PTX without a kernel entry"
            except Exception as e:  # noqa: BLE001 - report every kernel, not just the first failure
                err = f"{type(e).__name__}: {e}"
        dt = time.perf_counter() - t0
        results.append((name, err, dt))
        print(f"{'ok  ' if err is None else 'FAIL'} {name:<42} {dt:6.2f} s" + ("" if err is None else f"\n     {err}"))
    failed = [r for r in results if r[1]]
    print(f"cuda_compile_check: {len(results) - len(failed)} of {len(results)} kernels compile for sm_{cc[0]}{cc[1]}")
    if args.junitxml:
        suite = ET.Element("testsuite", name="cuda-compile", tests=str(len(results)), failures=str(len(failed)),
                           errors="0", skipped="0")
        for name, err, dt in results:
            case = ET.SubElement(suite, "testcase", classname="cuda_compile", name=name, time=f"{dt:.3f}")
            if err:
                ET.SubElement(case, "failure", message=err[:200]).text = err
        root = ET.Element("testsuites")
        root.append(suite)
        ET.ElementTree(root).write(args.junitxml, encoding="utf-8", xml_declaration=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
