"""A composable augmentation pipeline, configured from the training YAML::

    augment:
      - {op: flip, p: 0.5}
      - {op: crop, padding: 4}
      - {op: noise, std: 0.05}
      - {op: cutout, size: 8, p: 0.5}

``build_pipeline(list_of_dicts, seed)`` checks every entry (unknown ops or keys fail with
the valid list) and returns a :class:`Pipeline`; ``pipeline(x, y=None) -> (x, y)`` runs on
a collated batch: numpy or CPU torch (numba CPU kernels), or a CUDA array/tensor (numba
CUDA kernels, no host round trip for the data). It returns the same kind it was given and
never modifies its input.

Randomness: one numpy Generator seeded with ``seed`` draws every per-sample parameter, in
op order, on every backend; ``state_dict()``/``load_state_dict()`` carry it across a
resume. The pipeline refuses to run in a process other than the one that built it: CUDA
contexts and MPI do not survive ``fork``, so it belongs in the training process, applied
to collated batches, never inside DataLoader workers.

On the CPU, a run of consecutive ``flip``, ``crop``, ``noise``, ``cutout`` ops in that
order is fused into one pass over the batch (equal, element for element, to running them
one by one).
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Mapping, Sequence

import numpy as np

from hpctrain.config import from_mapping
from hpctrain.errors import ConfigError
from hpctrain.kernels.augment_ops import OPS, AugmentError, Op
from hpctrain.kernels._arrays import as_float32

_FUSED_SLOTS = {"flip": 0, "crop": 1, "noise": 2, "cutout": 3}


def build_op(entry: Mapping[str, Any], where: str = "augment[0]") -> Op:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a mapping like {{op: flip, p: 0.5}}, got {entry!r}")
    if "op" not in entry:
        raise ConfigError(f"{where}: missing 'op'; valid ops: {', '.join(sorted(OPS))}")
    name = entry["op"]
    if name not in OPS:
        close = difflib.get_close_matches(str(name), list(OPS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}.op: unknown augmentation {name!r}{hint}; valid ops: {', '.join(sorted(OPS))}")
    cls = OPS[name]
    cfg = from_mapping(cls.config_cls, {k: v for k, v in entry.items() if k != "op"}, where=f"{where}({name})")
    return cls(cfg)


def build_pipeline(entries: Sequence[Mapping[str, Any]] | None, seed: int = 0) -> Pipeline:
    """The pipeline for the ``augment:`` list of the training config (None or [] -> identity)."""
    if entries is None:
        entries = []
    if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Sequence):
        raise ConfigError(f"augment: expected a list of ops like [{{op: flip, p: 0.5}}], got {entries!r:.80}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"augment seed {seed!r} must be an integer")
    ops = [build_op(e, f"augment[{i}]") for i, e in enumerate(entries)]
    return Pipeline(ops, int(seed))


def _groups(ops: list[Op]) -> list[list[int]]:
    """Indices of ops, grouped into runs the fused CPU kernel can do in one pass."""
    out: list[list[int]] = []
    last = None
    for i, op in enumerate(ops):
        slot = _FUSED_SLOTS.get(op.name)
        if slot is not None and out and last is not None and slot > last:
            out[-1].append(i)
        else:
            out.append([i])
        last = slot
    return out


class _CudaContext:
    """Per-pipeline CUDA state: the xoroshiro128p states (created once, bounded in number)
    and the launch helpers."""

    def __init__(self, seed: int) -> None:
        from numba.cuda.random import create_xoroshiro128p_states

        from hpctrain.kernels import _cuda_common as C

        self.C = C
        self.simulator = C.SIMULATOR
        blocks, threads = C.flat_launch(1 << 40)  # the largest grid any call launches
        self.n_states = blocks * threads
        self.states = create_xoroshiro128p_states(self.n_states, seed=seed)
        self.stream = 0

    def flat(self, n: int):
        blocks, threads = self.C.flat_launch(n)
        return blocks, threads, self.stream

    def noise(self, n: int):
        blocks, threads = self.C.flat_launch(n)
        blocks = min(blocks, self.n_states // threads)  # thread tid uses states[tid]: stay in range
        return blocks, threads, self.stream

    def up(self, a):
        """A per-sample parameter array on the device (device arrays pass through)."""
        from numba import cuda

        if not isinstance(a, np.ndarray):
            return a
        return cuda.to_device(np.ascontiguousarray(a), stream=self.stream)


class Pipeline:
    def __init__(self, ops: list[Op], seed: int = 0) -> None:
        self.ops = list(ops)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.calls = 0
        self.fuse = True
        self._pid = os.getpid()
        self._cuda: _CudaContext | None = None
        self._mixes = any(op.name == "mixup" for op in self.ops)  # the only op that changes labels

    def __repr__(self) -> str:
        return f"Pipeline([{', '.join(op.name for op in self.ops)}], seed={self.seed})"

    def __len__(self) -> int:
        return len(self.ops)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cuda"] = None
        return state

    def state_dict(self) -> dict:
        return {"seed": self.seed, "calls": self.calls, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        self.seed, self.calls = int(d["seed"]), int(d["calls"])
        self.rng = np.random.default_rng(self.seed)
        self.rng.bit_generator.state = d["rng"]

    # -- running
    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise AugmentError("the augmentation pipeline was built in another process (a forked or spawned "
                               "DataLoader worker?); CUDA and MPI do not survive fork: apply it in the training "
                               "process to collated batches")

    def draw(self, shape: tuple[int, ...], y: Any) -> list[dict]:
        """The parameters of every op for one batch (advances the Generator)."""
        y_np = None if y is None else _labels_np(y)
        if y_np is not None and (y_np.ndim == 0 or len(y_np) != shape[0]):
            # wrong-length labels would otherwise go through unchanged (or fail deep in numpy)
            raise AugmentError(f"augment: labels of shape {y_np.shape} for a batch of {shape[0]} samples; "
                               f"expected one label per sample, shape ({shape[0]},) (or ({shape[0]}, classes))")
        params = []
        for op in self.ops:
            op.check(shape, y_np)
            params.append(op.draw(self.rng, shape, y_np))
            if op.name == "mixup":  # later ops see soft labels
                y_np = op.mix_labels(y_np, params[-1])
        return params

    def __call__(self, x: Any, y: Any = None) -> tuple[Any, Any]:
        self._check_process()
        if not self.ops:
            return x, y
        from hpctrain.kernels.impute import is_device_array

        if is_device_array(x):
            return self._run_cuda(x, y)
        return self._run_cpu(x, y)

    def _run_cpu(self, x: Any, y: Any) -> tuple[Any, Any]:
        is_torch = hasattr(x, "detach") and hasattr(x, "numpy")
        if is_torch and x.requires_grad:
            x = x.detach()
        xa = _as_float32(x.numpy() if is_torch else x)
        if xa.ndim < 2 or xa.shape[0] == 0:
            raise AugmentError(f"augment: batch of shape {xa.shape}; expected (N, ...) with N >= 1")
        params = self.draw(tuple(xa.shape), y)
        y_cur = None if y is None else _labels_np(y)
        owned = False  # never write into the caller's array
        groups = _groups(self.ops) if self.fuse else [[i] for i in range(len(self.ops))]
        for g in groups:
            if len(g) > 1:
                out = np.empty_like(xa)
                _fused_cpu(xa, out, [self.ops[i] for i in g], [params[i] for i in g])
            else:
                op = self.ops[g[0]]
                out = xa if (owned and op.elementwise) else np.empty_like(xa)
                ret = op.cpu(xa, out, params[g[0]], y_cur)
                if op.name == "mixup":
                    y_cur = ret
            xa, owned = out, True
        self.calls += 1
        y_out = _labels_like(y_cur, y) if self._mixes else y
        if is_torch:
            import torch

            return torch.from_numpy(xa), y_out
        return xa, y_out

    def _run_cuda(self, x: Any, y: Any) -> tuple[Any, Any]:
        from hpctrain.kernels import _cuda_common as C

        if self._cuda is None:
            self._cuda = _CudaContext(self.seed)
        ctx = self._cuda
        if C.is_torch(x):
            import torch

            if x.dtype != torch.float32 or not x.is_contiguous():
                x = x.contiguous().float()
        elif np.dtype(x.dtype) != np.float32:
            raise AugmentError(f"augment: device batch has dtype {x.dtype}; expected float32")
        ctx.stream = C.stream_for(x)
        shape = tuple(x.shape)
        params = self.draw(shape, None if y is None else y)
        y_cur = None if y is None else _labels_np(y)
        cur = x
        for op, prm in zip(self.ops, params):
            out, out_view = C.empty_like_kind(cur, shape)
            ret = op.cuda(C.as_device(cur), out_view, prm, y_cur, ctx)
            if op.name == "mixup":
                y_cur = ret
            cur = out
        self.calls += 1
        return cur, (_labels_like(y_cur, y) if self._mixes else y)


def _as_float32(x: Any) -> np.ndarray:
    """A C-contiguous float32 batch (a view when ``x`` already is one); other numeric dtypes
    are cast, refusing values the cast would turn into inf."""
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise AugmentError(f"augment: the batch cannot be read as a numeric array ({e})") from None
    if a.dtype.kind not in "fiub":
        # np.asarray(..., float32) turns None into NaN and fails on strings deep inside numpy
        raise AugmentError(f"augment: batch of dtype {a.dtype}; expected a float32 (N, ...) array: "
                           "convert it with x.astype(np.float32)")
    out, overflow = as_float32(a)
    if overflow:
        raise AugmentError(f"augment: batch of dtype {a.dtype} holds values beyond the float32 range (|x| > 3.4e38), "
                           "which the float32 output cannot hold: rescale the data first")
    return out


def _labels_np(y: Any) -> np.ndarray:
    if hasattr(y, "detach"):
        return y.detach().cpu().numpy()
    if type(y).__module__.startswith("numba.cuda"):
        return y.copy_to_host()
    return np.asarray(y)


def _labels_like(y_new: np.ndarray | None, y_in: Any) -> Any:
    """Labels back in the caller's kind (torch on the same device, or numpy)."""
    if y_new is None:
        return None
    if hasattr(y_in, "detach"):
        import torch

        t = torch.from_numpy(np.ascontiguousarray(y_new))
        return t.to(y_in.device) if y_in.device.type != "cpu" else t
    return y_new


def _fused_cpu(x: np.ndarray, out: np.ndarray, ops: list[Op], params: list[dict]) -> None:
    from hpctrain.kernels import _augment_cpu as K

    n = x.shape[0]
    z8 = np.zeros(n, dtype=np.uint8)
    zi = np.zeros(n, dtype=np.int64)
    a = {"fh": z8, "fv": z8, "dy": zi, "dx": zi, "pad": 0, "apply": z8, "mean": 0.0, "std": 0.0,
         "key": np.uint64(0), "y0": zi, "y1": zi, "x0": zi, "x1": zi, "value": np.float32(0.0)}
    for op, prm in zip(ops, params):
        if op.name == "flip":
            a.update(fh=prm["fh"], fv=prm["fv"])
        elif op.name == "crop":
            a.update(dy=prm["dy"], dx=prm["dx"], pad=prm["pad"])
        elif op.name == "noise":
            a.update(apply=prm["apply"], key=prm["key"], mean=float(op.cfg.mean), std=float(op.cfg.std))
        elif op.name == "cutout":
            a.update(y0=prm["y0"], y1=prm["y1"], x0=prm["x0"], x1=prm["x1"], value=np.float32(op.cfg.value))
    K.fused_image(x, out, a["fh"], a["fv"], a["dy"], a["dx"], a["pad"], a["apply"], a["mean"], a["std"], a["key"],
                  a["y0"], a["y1"], a["x0"], a["x1"], a["value"])
