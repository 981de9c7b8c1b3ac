"""Mixed precision, gradient clipping and the optimizer step that combines them with the
gradient exchange (used by the trainer and by the session API).

* ``bf16``: autocast to bfloat16 on CPU or CUDA. Its exponent range is float32's, so no loss
  scaling is needed; weights and optimizer state stay float32.
* ``fp16``: autocast to float16 on CUDA with a ``GradScaler``: small gradients underflow in
  float16 without scaling. The scaler's state (scale, growth tracker) goes into checkpoints,
  so a resumed run scales exactly as the uninterrupted one. Refused without CUDA.
* Clipping and unscaling must see the AVERAGED gradients, identical on every rank, or ranks
  would clip differently and drift apart: the exchange is synchronised first, then the
  optimizer steps without a second exchange.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable

from hpctrain.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")


def autocast(device, precision: str):
    """The forward/loss context for ``precision`` on ``device`` (a torch.device)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("run.precision=fp16 needs CUDA (gradient scaling and fp16 kernels are CUDA-only); use "
                          "run.precision=bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(precision: str, device) -> Any:
    """A GradScaler for fp16 on CUDA, else None."""
    if precision != "fp16":
        return None
    import torch

    return torch.amp.GradScaler(device.type)


def _synchronize(exchange) -> contextlib.AbstractContextManager:
    """Finish the gradient exchange now; returns the context in which the optimizer may step
    without exchanging again."""
    if hasattr(exchange, "synchronize"):  # every backend's buckets: step() of the raw optimizer exchanges nothing
        exchange.synchronize()
        return contextlib.nullcontext()
    raise ConfigError(f"gradient exchange {type(exchange).__name__} cannot be synchronised before clipping or "
                      "unscaling; use comm.backend mpi, torch or horovod")


def apply_step(exchange, params: Iterable, *, scaler=None, clip_grad_norm: float | None = None) -> float | None:
    """``exchange.step()``, with unscaling and clipping of the averaged gradients in between
    when asked. Returns the gradient norm before clipping (None when not clipping)."""
    if scaler is None and clip_grad_norm is None:
        exchange.step()
        return None
    import torch

    quiet = _synchronize(exchange)
    opt = exchange.optimizer
    norm = None
    if scaler is not None:
        scaler.unscale_(opt)
    if clip_grad_norm is not None:
        norm = float(torch.nn.utils.clip_grad_norm_(list(params), clip_grad_norm))
    with quiet:
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
    return norm
