"""Batch augmentation operations: configs, random parameter draws and CPU/CUDA dispatch.

Each operation is a small class with a typed config (``from_mapping`` rejects unknown
keys), ``draw(rng, x, y)`` that draws its per-sample parameters from a numpy Generator,
and ``cpu(...)`` / ``cuda(...)`` that run the kernels with those parameters. Because the
per-sample parameters are drawn on the host by the same Generator on either backend,
CPU and CUDA outputs are equal for every operation except the per-element noise ones
(gaussian ``noise``, ``salt_pepper``, ``tabular_noise``), whose streams differ by design:
the CPU uses a counter-based stream, CUDA xoroshiro128p states.

Compose operations with :func:`hpctrain.kernels.pipeline.build_pipeline`. Import them from
:mod:`hpctrain.kernels.augment`, which also re-exports ``build_pipeline``.

Image operations take (N, C, H, W) float32 batches; tabular ones (N, D).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math
from typing import Any, ClassVar, Literal

import numpy as np

from hpctrain.errors import ConfigError, HpctrainError


class AugmentError(HpctrainError):
    """A batch handed to an augmentation has the wrong shape, type or labels."""


def _check_p(p: float, where: str) -> None:
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"p is {p}; expected a probability in [0, 1] (in {where})")


def _check_finite(where: str, **values: float) -> None:
    # a NaN passes every 'x < 0' test and turns the whole batch into NaN without a word
    for k, v in values.items():
        if not math.isfinite(v):
            raise ConfigError(f"{k} is {v}; expected a finite number (in {where})")


# --- configs ------------------------------------------------------------------------------


@dataclass(kw_only=True, slots=True)
class FlipConfig:
    p: float = field(default=0.5, metadata={"help": "probability that a sample is flipped"})
    axis: Literal["horizontal", "vertical"] = field(default="horizontal",
                                                    metadata={"help": "horizontal (mirror W) or vertical (mirror H)"})

    def __post_init__(self) -> None:
        _check_p(self.p, "flip")


@dataclass(kw_only=True, slots=True)
class CropConfig:
    padding: int = field(default=4, metadata={"help": "zero padding on each side before a random HxW crop"})
    p: float = field(default=1.0, metadata={"help": "probability that a sample is cropped"})

    def __post_init__(self) -> None:
        _check_p(self.p, "crop")
        if self.padding < 0:
            raise ConfigError(f"padding is {self.padding}; expected >= 0")


@dataclass(kw_only=True, slots=True)
class NoiseConfig:
    std: float = field(default=0.1, metadata={"help": "standard deviation of the added Gaussian noise"})
    mean: float = field(default=0.0, metadata={"help": "mean of the added Gaussian noise"})
    p: float = field(default=1.0, metadata={"help": "probability that a sample gets noise"})

    def __post_init__(self) -> None:
        _check_p(self.p, "noise")
        _check_finite("noise", std=self.std, mean=self.mean)
        if self.std < 0:
            raise ConfigError(f"std is {self.std}; expected >= 0")


@dataclass(kw_only=True, slots=True)
class SaltPepperConfig:
    amount: float = field(default=0.05, metadata={"help": "share of a sample's elements replaced"})
    salt: float = field(default=1.0, metadata={"help": "value of a salt element"})
    pepper: float = field(default=0.0, metadata={"help": "value of a pepper element"})
    p: float = field(default=1.0, metadata={"help": "probability that a sample is affected"})

    def __post_init__(self) -> None:
        _check_p(self.p, "salt_pepper")
        _check_finite("salt_pepper", salt=self.salt, pepper=self.pepper)
        if not 0.0 <= self.amount <= 1.0:
            raise ConfigError(f"amount is {self.amount}; expected a share in [0, 1]")


@dataclass(kw_only=True, slots=True)
class CutoutConfig:
    size: int = field(default=8, metadata={"help": "side of the square set to value (clipped at the border)"})
    value: float = field(default=0.0, metadata={"help": "fill value of the square"})
    p: float = field(default=0.5, metadata={"help": "probability that a sample gets a square"})

    def __post_init__(self) -> None:
        _check_p(self.p, "cutout")
        _check_finite("cutout", value=self.value)
        if self.size < 1:
            raise ConfigError(f"size is {self.size}; expected >= 1")


@dataclass(kw_only=True, slots=True)
class JitterConfig:
    brightness: float = field(default=0.2, metadata={"help": "added offset drawn from U(-b, b)"})
    contrast: float = field(default=0.2, metadata={"help": "scale about the sample mean drawn from U(1-c, 1+c)"})
    p: float = field(default=1.0, metadata={"help": "probability that a sample is jittered"})

    def __post_init__(self) -> None:
        _check_p(self.p, "jitter")
        _check_finite("jitter", brightness=self.brightness, contrast=self.contrast)
        if self.brightness < 0 or not 0 <= self.contrast <= 1:
            raise ConfigError(f"brightness {self.brightness} must be >= 0 and contrast {self.contrast} "
                              "in [0, 1]")


@dataclass(kw_only=True, slots=True)
class MixupConfig:
    num_classes: int = field(metadata={"help": "number of classes (width of the soft labels)"})
    alpha: float = field(default=0.2, metadata={"help": "Beta(alpha, alpha) for the mixing weight"})
    p: float = field(default=1.0, metadata={"help": "probability that a sample is mixed"})

    def __post_init__(self) -> None:
        _check_p(self.p, "mixup")
        _check_finite("mixup", alpha=self.alpha)
        if self.alpha <= 0:
            raise ConfigError(f"alpha is {self.alpha}; expected > 0")
        if self.num_classes < 2:
            raise ConfigError(f"num_classes is {self.num_classes}; expected >= 2")


@dataclass(kw_only=True, slots=True)
class TabularNoiseConfig:
    scale: float = field(default=0.05, metadata={"help": "noise std as a multiple of each feature's batch std"})
    p: float = field(default=1.0, metadata={"help": "probability that a row gets noise"})

    def __post_init__(self) -> None:
        _check_p(self.p, "tabular_noise")
        _check_finite("tabular_noise", scale=self.scale)
        if self.scale < 0:
            raise ConfigError(f"scale is {self.scale}; expected >= 0")


@dataclass(kw_only=True, slots=True)
class SmoteConfig:
    p: float = field(default=0.5, metadata={"help": "probability that a minority-class row is interpolated"})
    k: int = field(default=5, metadata={"help": "neighbours (same class, in the batch) to choose from; 1..16"})
    minority: list[int] | None = field(default=None, metadata={
        "help": "classes to oversample; default: every class rarer than the most common one in the batch"})

    def __post_init__(self) -> None:
        _check_p(self.p, "smote")
        if not 1 <= self.k <= 16:
            raise ConfigError(f"k is {self.k}; expected 1..16")


# --- operations ---------------------------------------------------------------------------


def _n(x) -> int:
    return int(x.shape[0])


class Op:
    name: ClassVar[str]
    config_cls: ClassVar[type]
    kind: ClassVar[str]  # "image", "tabular" or "any"
    elementwise: ClassVar[bool] = False  # may write in place

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg})"

    def check(self, shape: tuple[int, ...], y: Any) -> None:
        if self.kind == "image" and len(shape) != 4:
            raise AugmentError(f"augment op {self.name!r} needs image batches (N, C, H, W); got shape {shape}")
        if self.kind == "tabular" and len(shape) != 2:
            raise AugmentError(f"augment op {self.name!r} needs tabular batches (N, D); got shape {shape}")

    def draw(self, rng: np.random.Generator, shape: tuple[int, ...], y: np.ndarray | None) -> dict:
        raise NotImplementedError

    def cpu(self, x: np.ndarray, out: np.ndarray, prm: dict, y: np.ndarray | None) -> np.ndarray | None:
        raise NotImplementedError

    def cuda(self, x, out, prm: dict, y, ctx) -> Any:
        raise NotImplementedError


def _flags(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    return (rng.random(n) < p).astype(np.uint8)


class Flip(Op):
    name, config_cls, kind = "flip", FlipConfig, "image"

    def draw(self, rng, shape, y):
        f = _flags(rng, shape[0], self.cfg.p)
        z = np.zeros_like(f)
        return {"fh": f, "fv": z} if self.cfg.axis == "horizontal" else {"fh": z, "fv": f}

    def cpu(self, x, out, prm, y):
        from hpctrain.kernels import _augment_cpu as K

        K.flip(x, out, prm["fh"], prm["fv"])

    def cuda(self, x, out, prm, y, ctx):
        from hpctrain.kernels import _cuda_augment as G

        G.flip_kernel[ctx.flat(x.size)](x, out, ctx.up(prm["fh"]), ctx.up(prm["fv"]))


class Crop(Op):
    name, config_cls, kind = "crop", CropConfig, "image"

    def check(self, shape, y):
        super().check(shape, y)
        pad = self.cfg.padding
        if pad >= min(shape[2:]):
            # a window may then lie wholly in the padding: an all-zero sample
            raise AugmentError(f"augment op 'crop': padding {pad} is not smaller than the image ({shape[2]} x "
                               f"{shape[3]}); use a padding below {min(shape[2:])} (the usual one is H/8)")

    def draw(self, rng, shape, y):
        n, pad = shape[0], self.cfg.padding
        dy = rng.integers(0, 2 * pad + 1, n)
        dx = rng.integers(0, 2 * pad + 1, n)
        keep = rng.random(n) >= self.cfg.p
        dy[keep] = pad
        dx[keep] = pad
        return {"dy": dy.astype(np.int64), "dx": dx.astype(np.int64), "pad": pad}

    def cpu(self, x, out, prm, y):
        from hpctrain.kernels import _augment_cpu as K

        K.crop(x, out, prm["dy"], prm["dx"], prm["pad"])

    def cuda(self, x, out, prm, y, ctx):
        from hpctrain.kernels import _cuda_augment as G

        G.crop_kernel[ctx.flat(x.size)](x, out, ctx.up(prm["dy"]), ctx.up(prm["dx"]), prm["pad"])


def _key(rng: np.random.Generator) -> np.uint64:
    from hpctrain.kernels._rng import stream_key

    return stream_key(int(rng.integers(0, 2**62)), 0)


class Noise(Op):
    name, config_cls, kind, elementwise = "noise", NoiseConfig, "any", True

    def draw(self, rng, shape, y):
        return {"apply": _flags(rng, shape[0], self.cfg.p), "key": _key(rng)}

    def cpu(self, x, out, prm, y):
        from hpctrain.kernels import _augment_cpu as K

        K.gaussian(x, out, prm["apply"], float(self.cfg.mean), float(self.cfg.std), prm["key"])

    def cuda(self, x, out, prm, y, ctx):
        from hpctrain.kernels import _cuda_augment as G

        x2, o2 = x.reshape(x.shape[0], -1), out.reshape(out.shape[0], -1)
        G.gaussian_kernel[ctx.noise(x.size)](x2, o2, ctx.up(prm["apply"]), np.float32(self.cfg.mean),
                                             np.float32(self.cfg.std), ctx.states)


class SaltPepper(Op):
    name, config_cls, kind, elementwise = "salt_pepper", SaltPepperConfig, "any", True

    def draw(self, rng, shape, y):
        return {"apply": _flags(rng, shape[0], self.cfg.p), "key": _key(rng)}

    def cpu(self, x, out, prm, y):
        from hpctrain.kernels import _augment_cpu as K

        c = self.cfg
        K.salt_pepper(x, out, prm["apply"], float(c.amount), np.float32(c.salt), np.float32(c.pepper), prm["key"])

    def cuda(self, x, out, prm, y, ctx):
        from hpctrain.kernels import _cuda_augment as G

        c = self.cfg
        x2, o2 = x.reshape(x.shape[0], -1), out.reshape(out.shape[0], -1)
        G.salt_pepper_kernel[ctx.noise(x.size)](x2, o2, ctx.up(prm["apply"]), np.float32(c.amount),
                                                np.float32(c.salt), np.float32(c.pepper), ctx.states)


class Cutout(Op):
    name, config_cls, kind, elementwise = "cutout", CutoutConfig, "image", True

    def draw(self, rng, shape, y):
        n, _, h, w = shape
        s = self.cfg.size
        cy = rng.integers(0, h, n)
        cx = rng.integers(0, w, n)
        on = rng.random(n) < self.cfg.p
        y0 = np.clip(cy - s // 2, 0, h)
        x0 = np.clip(cx - s // 2, 0, w)
        y1 = np.where(on, np.clip(cy - s // 2 + s, 0, h), y0)  # an empty box switches it off
        x1 = np.where(on, np.clip(cx - s // 2 + s, 0, w), x0)
        return {k: v.astype(np.int64) for k, v in (("y0", y0), ("y1", y1), ("x0", x0), ("x1", x1))}

    def cpu(self, x, out, prm, y):
        from hpctrain.kernels import _augment_cpu as K

        K.cutout(x, out, prm["y0"], prm["y1"], prm["x0"], prm["x1"], np.float32(self.cfg.value))

    def cuda(self, x, out, prm, y, ctx):
        from hpctrain.kernels import _cuda_augment as G

        G.cutout_kernel[ctx.flat(x.size)](x, out, *(ctx.up(prm[k]) for k in ("y0", "y1", "x0", "x1")),
                                          np.float32(self.cfg.value))


class Jitter(Op):
    name, config_cls, kind, elementwise = "jitter", JitterConfig, "image", True

    def draw(self, rng, shape, y):
        n, c = shape[0], self.cfg
        b = rng.uniform(-c.brightness, c.brightness, n)
        k = rng.uniform(1 - c.contrast, 1 + c.contrast, n)
        off = rng.random(n) >= c.p
        b[off] = 0.0
        k[off] = 1.0
        return {"bright": b.astype(np.float32), "contrast": k.astype(np.float32)}

    def cpu(self, x, out, prm, y):
        from hpctrain.kernels import _augment_cpu as K

        K.jitter(x, out, prm["bright"], prm["contrast"])

    def cuda(self, x, out, prm, y, ctx):
        from hpctrain.kernels import _cuda_augment as G

        x2, o2 = x.reshape(x.shape[0], -1), out.reshape(out.shape[0], -1)
        blocks = max(1, min(x.shape[0], 4 if ctx.simulator else 65535))
        G.jitter_kernel[blocks, G.REDUCE_THREADS, ctx.stream](x2, o2, ctx.up(prm["bright"]),
                                                              ctx.up(prm["contrast"]))


def class_ids(y: np.ndarray, op: str) -> np.ndarray:
    """``y`` as int64 class ids; float labels must hold whole numbers (one cheap pass over N labels)."""
    if y.dtype.kind in "iub":
        return y.astype(np.int64, copy=False)
    if y.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if bad.size == 0:
            return y.astype(np.int64)
        raise AugmentError(f"augment op {op!r}: label {y[bad[0]].item()!r} (sample {int(bad[0])}) is not a class id; "
                           "expected (N,) integer labels: pass the integer class ids (torch.long / np.int64)")
    raise AugmentError(f"augment op {op!r}: labels of dtype {y.dtype}; expected (N,) integer class ids")


def soft_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """(N,) integer labels -> (N, K) one-hot float32; (N, K) soft labels pass through."""
    y = np.asarray(y)
    if y.ndim == 2:
        if y.shape[1] != num_classes:
            raise AugmentError(f"soft labels have {y.shape[1]} columns; mixup.num_classes is {num_classes}")
        if y.dtype.kind not in "fiub":
            raise AugmentError(f"soft labels of dtype {y.dtype}; expected (N, {num_classes}) float weights")
        return y.astype(np.float32)
    if y.ndim == 1:
        y = class_ids(y, "mixup")
    if y.ndim != 1 or (y.size and (y.min() < 0 or y.max() >= num_classes)):
        raise AugmentError(f"labels must be (N,) class ids in [0, {num_classes}) or (N, {num_classes}) soft labels; "
                           f"got shape {y.shape}" + (f", range {y.min()}..{y.max()}" if y.size else ""))
    out = np.zeros((len(y), num_classes), dtype=np.float32)
    out[np.arange(len(y)), y.astype(np.int64)] = 1.0
    return out


class Mixup(Op):
    """Returns mixed inputs and mixed soft labels (N, num_classes) that sum to 1 per row."""

    name, config_cls, kind = "mixup", MixupConfig, "any"

    def check(self, shape, y):
        super().check(shape, y)
        if y is None:
            raise AugmentError("augment op 'mixup' needs the labels: call pipeline(x, y)")

    def draw(self, rng, shape, y):
        n = shape[0]
        lam = rng.beta(self.cfg.alpha, self.cfg.alpha, n)
        lam[rng.random(n) >= self.cfg.p] = 1.0
        return {"perm": rng.permutation(n).astype(np.int64), "lam": lam.astype(np.float32)}

    def mix_labels(self, y: np.ndarray, prm: dict) -> np.ndarray:
        soft = soft_labels(y, self.cfg.num_classes)
        lam = prm["lam"][:, None]
        return lam * soft + (np.float32(1.0) - lam) * soft[prm["perm"]]

    def cpu(self, x, out, prm, y):
        from hpctrain.kernels import _augment_cpu as K

        K.mixup(x, out, prm["perm"], prm["lam"])
        return self.mix_labels(y, prm)

    def cuda(self, x, out, prm, y, ctx):
        from hpctrain.kernels import _cuda_augment as G

        x2, o2 = x.reshape(x.shape[0], -1), out.reshape(out.shape[0], -1)
        G.mixup_kernel[ctx.flat(x.size)](x2, o2, ctx.up(prm["perm"]), ctx.up(prm["lam"]))
        return self.mix_labels(y, prm)


class TabularNoise(Op):
    name, config_cls, kind, elementwise = "tabular_noise", TabularNoiseConfig, "tabular", True

    def draw(self, rng, shape, y):
        return {"apply": _flags(rng, shape[0], self.cfg.p), "key": _key(rng)}

    def cpu(self, x, out, prm, y):
        from hpctrain.kernels import _augment_cpu as K

        std = K.column_std(x)
        K.tabular_noise(x, out, prm["apply"], std, float(self.cfg.scale), prm["key"])

    def cuda(self, x, out, prm, y, ctx):
        from numba import cuda

        from hpctrain.kernels import _cuda_augment as G

        std = cuda.device_array(x.shape[1], dtype=np.float32, stream=ctx.stream)
        G.column_std_kernel[min(x.shape[1], 4 if ctx.simulator else 4096), G.REDUCE_THREADS, ctx.stream](x, std)
        G.tabular_noise_kernel[ctx.noise(x.size)](x, out, ctx.up(prm["apply"]), std, np.float32(self.cfg.scale),
                                                  ctx.states)


class Smote(Op):
    name, config_cls, kind = "smote", SmoteConfig, "tabular"

    def check(self, shape, y):
        super().check(shape, y)
        if y is None:
            raise AugmentError("augment op 'smote' needs the labels: call pipeline(x, y)")
        if np.ndim(y) != 1:
            raise AugmentError(f"augment op 'smote' needs (N,) integer labels; got shape {np.shape(y)} "
                               "(put smote before mixup)")
        class_ids(np.asarray(y), "smote")

    def draw(self, rng, shape, y):
        n = shape[0]
        y = np.asarray(y)
        if self.cfg.minority is not None:
            minority = np.isin(y, np.asarray(self.cfg.minority))
        else:
            vals, cnt = np.unique(y, return_counts=True)
            rare = vals[cnt < cnt.max()] if len(cnt) else vals
            minority = np.isin(y, rare)
        sel = (minority & (rng.random(n) < self.cfg.p)).astype(np.uint8)
        return {"select": sel, "u": rng.random(n).astype(np.float32),
                "r": rng.integers(0, 2**31, n).astype(np.int64), "y": class_ids(y, "smote")}

    def cpu(self, x, out, prm, y):
        from hpctrain.kernels import _augment_cpu as K

        K.smote(x, out, prm["y"], prm["select"], prm["u"], prm["r"], self.cfg.k)

    def cuda(self, x, out, prm, y, ctx):
        from hpctrain.kernels import _cuda_augment as G

        G.smote_kernel[ctx.flat(x.shape[0])](x, out, ctx.up(prm["y"]), ctx.up(prm["select"]), ctx.up(prm["u"]),
                                             ctx.up(prm["r"]), self.cfg.k)


OPS: dict[str, type[Op]] = {cls.name: cls for cls in
                            (Flip, Crop, Noise, SaltPepper, Cutout, Jitter, Mixup, TabularNoise, Smote)}
