"""The training config: one typed dataclass per section, loaded strictly from YAML.

Static checks (types, ranges, combinations) run in ``__post_init__`` while the config is
built; checks that need the world size or the file system run in
:func:`hpctrain.train.plan.check_runtime`.
Both run before any process group starts, so a typo costs seconds, not a queue wait.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from hpctrain.comm.horovod_knobs import HorovodKnobs
from hpctrain.config import apply_overrides, field_docs, from_mapping, load_yaml, to_dict
from hpctrain.errors import ConfigError


def _positive(where: str, value: float | int, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        want = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{where}: got {value!r}, expected a finite number {want}")


def _fraction(where: str, value: float, *, closed: bool = False) -> None:
    if not (0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0):
        raise ConfigError(f"{where}: got {value!r}, expected a number in [0, 1{']' if closed else ')'}")


@dataclass(kw_only=True, slots=True)
class RunConfig:
    name: str = field(default="run", metadata={"help": "run name; the default run dir is runs/<name>"})
    dir: Path | None = field(default=None, metadata={
        "help": "run directory (checkpoints, metrics, plots, result.json); default runs/<name>. Stable across "
                "requeues: never key it by job id"})
    seed: int = field(default=0, metadata={"help": "base seed; rank r seeds its RNGs with seed + 1000 * r"})
    group_share: bool = field(default=False, metadata={
        "help": "open the run dir to your group (dirs 0750, files 0640); default private (0700/0600) "
                "whatever the umask"})
    epochs: int = field(default=10, metadata={"help": "number of epochs"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many optimizer steps in total"})
    deterministic: bool = field(default=True, metadata={
        "help": "torch.use_deterministic_algorithms(True) and native CPU kernels instead of oneDNN: a resumed run "
                "is bit-for-bit equal to an uninterrupted one on CPU"})
    threads: int | None = field(default=1, metadata={
        "help": "torch threads per rank (null: torch's default). One per rank avoids oversubscribing cores"})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={
        "help": "auto: the CUDA device of this rank's local rank when CUDA is present, else CPU"})
    precision: Literal["fp32", "bf16", "fp16"] = field(default="fp32", metadata={
        "help": "forward/loss under autocast: bf16 (CPU or CUDA), fp16 (CUDA only, with a gradient scaler whose "
                "state is checkpointed), fp32 (no autocast). Weights and optimizer state stay float32"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the model (the checkpoint keeps the plain parameter names, so a run may resume "
                "with or without it)"})

    def __post_init__(self):
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"run.name: got {self.name!r}, expected a non-empty name without '/'")
        _positive("run.epochs", self.epochs)
        if self.max_steps is not None:
            _positive("run.max_steps", self.max_steps)
        if self.threads is not None:
            _positive("run.threads", self.threads)
        if not 0 <= self.seed < 2**31:  # numpy refuses negative seeds; rank r adds 1000 * r
            raise ConfigError(f"run.seed: got {self.seed}, expected an integer in [0, 2**31)")
        if self.dir is None:
            self.dir = Path("runs") / self.name


@dataclass(kw_only=True, slots=True)
class DataConfig:
    dir: Path | None = field(default=None, metadata={
        "help": "shard directory written by 'hpctrain shard' (holds manifest.json)"})
    train_split: str = field(default="train", metadata={"help": "manifest split used for training"})
    val_split: str | None = field(default="val", metadata={"help": "manifest split used for validation (null: none)"})
    batch_size: int = field(default=32, metadata={"help": "samples per rank per backward pass"})
    global_batch_size: int | None = field(default=None, metadata={
        "help": "if set, samples per optimizer step over all ranks; must equal "
                "batch_size * world size * comm.backward_passes_per_step (batch_size is then derived)"})
    shuffle: bool = field(default=True, metadata={"help": "reshuffle every epoch (seeded: run.seed + epoch)"})
    prefetch: int = field(default=2, metadata={"help": "batches read ahead by the loader"})
    key: Path | None = field(default=None, metadata={
        "help": "key file of encrypted shards ('hpctrain shard --encrypt KEYFILE'); only this path is stored, "
                "every rank reads the key itself"})
    task: Literal["auto", "classification", "regression"] = field(default="auto", metadata={
        "help": "auto: what the shards hold (class labels, or float targets written with 'hpctrain shard --task "
                "regression'); a stated task that the shards do not hold is an error"})

    def __post_init__(self):
        _positive("data.batch_size", self.batch_size)
        if self.global_batch_size is not None:
            _positive("data.global_batch_size", self.global_batch_size)
        _positive("data.prefetch", self.prefetch, allow_zero=True)


@dataclass(kw_only=True, slots=True)
class ModelConfig:
    kind: Literal["mlp", "cnn", "attention"] = field(default="mlp", metadata={
        "help": "mlp (tables), cnn (images C x H x W), attention (features as tokens; exposes attention weights)"})
    module: str | None = field(default=None, metadata={
        "help": "your own model: 'package.module:factory', called as factory(**model.args, sample_shape=..., "
                "num_outputs=...) and returning a torch.nn.Module (a built-in name mlp/cnn/attention works too). "
                "Replaces kind/hidden/channels/embed_dim/heads/layers/dropout"})
    args: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "keyword arguments of the model.module factory"})
    hidden: list[int] = field(default_factory=lambda: [128, 64], metadata={"help": "mlp: hidden layer widths"})
    channels: list[int] = field(default_factory=lambda: [16, 32], metadata={
        "help": "cnn: channels of each 3x3 conv block"})
    embed_dim: int = field(default=32, metadata={"help": "attention: token embedding width"})
    heads: int = field(default=4, metadata={"help": "attention: heads; must divide embed_dim"})
    layers: int = field(default=1, metadata={"help": "attention: encoder blocks"})
    dropout: float = field(default=0.0, metadata={"help": "dropout probability in hidden layers"})
    init_from: Path | None = field(default=None, metadata={
        "help": "transfer learning: a checkpoint (.pt from a run dir) whose weights initialise the model; "
                "the head is replaced when the class count differs"})
    freeze: list[str] = field(default_factory=list, metadata={
        "help": "glob patterns of parameter names to freeze (e.g. 'features.*'); a pattern that matches "
                "nothing fails, listing the model's parameter names"})

    def __post_init__(self):
        for i, h in enumerate(self.hidden):
            _positive(f"model.hidden[{i}]", h)
        for i, c in enumerate(self.channels):
            _positive(f"model.channels[{i}]", c)
        _positive("model.embed_dim", self.embed_dim)
        _positive("model.heads", self.heads)
        _positive("model.layers", self.layers)
        if self.embed_dim % self.heads:
            raise ConfigError(f"model.heads: {self.heads} does not divide model.embed_dim={self.embed_dim}; "
                              "choose heads that divide embed_dim")
        _fraction("model.dropout", self.dropout)
        if self.args and self.module is None:
            raise ConfigError("model.args: only used with model.module; set model.module='package.module:factory' "
                              "or remove model.args")
        if self.module is not None and self.module not in ("mlp", "cnn", "attention") and (
                ":" not in self.module or self.module.startswith(":") or self.module.endswith(":")):
            raise ConfigError(f"model.module: got {self.module!r}, expected 'package.module:factory' (or a built-in "
                              "name: mlp, cnn, attention)")


@dataclass(kw_only=True, slots=True)
class OptimizerConfig:
    name: Literal["sgd", "adam", "adamw"] = field(default="adamw", metadata={
        "help": "sgd (with momentum), adam, adamw"})
    lr: float = field(default=1e-3, metadata={"help": "base learning rate for ONE rank (see schedule.scale_lr)"})
    momentum: float = field(default=0.9, metadata={"help": "sgd momentum"})
    nesterov: bool = field(default=False, metadata={"help": "sgd Nesterov momentum"})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={"help": "adam/adamw betas"})
    eps: float = field(default=1e-8, metadata={"help": "adam/adamw epsilon"})
    body_lr_scale: float = field(default=1.0, metadata={
        "help": "transfer learning: LR multiplier of the non-head parameters (e.g. 0.1)"})
    clip_grad_norm: float | None = field(default=None, metadata={
        "help": "clip the global L2 norm of the averaged gradients to this value before each step (null: off)"})

    def __post_init__(self):
        _positive("optimizer.lr", self.lr)
        _fraction("optimizer.momentum", self.momentum)
        if len(self.betas) != 2:
            raise ConfigError(f"optimizer.betas: got {self.betas!r}, expected two numbers")
        for i, b in enumerate(self.betas):
            _fraction(f"optimizer.betas[{i}]", b)
        _positive("optimizer.eps", self.eps)
        _positive("optimizer.body_lr_scale", self.body_lr_scale)
        if self.clip_grad_norm is not None:
            _positive("optimizer.clip_grad_norm", self.clip_grad_norm)
        if self.nesterov and self.name != "sgd":
            raise ConfigError("optimizer.nesterov: only meaningful with optimizer.name=sgd")


@dataclass(kw_only=True, slots=True)
class ScheduleConfig:
    kind: Literal["constant", "step", "exponential", "cosine", "plateau"] = field(default="constant", metadata={
        "help": "constant; step (x gamma every step_epochs); exponential (x gamma per epoch); cosine (to min_lr "
                "at the end); plateau (x gamma after plateau_patience epochs without val improvement)"})
    scale_lr: bool = field(default=True, metadata={
        "help": "linear scaling rule: multiply optimizer.lr by the world size (Goyal et al. 2017)"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warmup from lr/world_size to the scaled lr"})
    step_epochs: int = field(default=10, metadata={"help": "step: epochs between decays"})
    gamma: float = field(default=0.1, metadata={"help": "step/exponential/plateau decay factor"})
    min_lr: float = field(default=0.0, metadata={"help": "cosine: final LR; plateau: floor"})
    plateau_patience: int = field(default=2, metadata={"help": "plateau: epochs without improvement before decay"})

    def __post_init__(self):
        _positive("schedule.warmup_steps", self.warmup_steps, allow_zero=True)
        _positive("schedule.step_epochs", self.step_epochs)
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"schedule.gamma: got {self.gamma!r}, expected 0 < gamma <= 1")
        _positive("schedule.min_lr", self.min_lr, allow_zero=True)
        _positive("schedule.plateau_patience", self.plateau_patience, allow_zero=True)


@dataclass(kw_only=True, slots=True)
class RegularizationConfig:
    weight_decay: float = field(default=0.0, metadata={"help": "L2: weight decay (decoupled for adamw)"})
    l1: float = field(default=0.0, metadata={"help": "L1 penalty coefficient added to the loss"})
    label_smoothing: float = field(default=0.0, metadata={"help": "cross-entropy label smoothing"})
    early_stopping: bool = field(default=False, metadata={
        "help": "stop when the monitored validation metric stops improving; restores the best weights"})
    monitor: Literal["val_macro_f1", "val_accuracy", "val_loss", "val_r2", "val_mse", "val_mae"] = field(
        default="val_macro_f1", metadata={
            "help": "validation metric for early stopping, plateau schedules and the 'best' checkpoint (regression: "
                    "val_r2, val_mse, val_mae or val_loss; the classification default then means val_loss)"})
    patience: int = field(default=3, metadata={"help": "epochs without improvement before stopping"})
    min_delta: float = field(default=0.0, metadata={"help": "smallest change counted as an improvement"})

    def __post_init__(self):
        _positive("regularization.weight_decay", self.weight_decay, allow_zero=True)
        _positive("regularization.l1", self.l1, allow_zero=True)
        _fraction("regularization.label_smoothing", self.label_smoothing)
        _positive("regularization.patience", self.patience)
        _positive("regularization.min_delta", self.min_delta, allow_zero=True)


@dataclass(kw_only=True, slots=True)
class ImbalanceConfig:
    class_weights: Literal["none", "balanced"] = field(default="none", metadata={
        "help": "balanced: loss weights n / (k * count_c) from the manifest's class counts"})
    loss: Literal["cross_entropy", "focal"] = field(default="cross_entropy", metadata={
        "help": "focal down-weights easy examples (Lin et al. 2017)"})
    focal_gamma: float = field(default=2.0, metadata={"help": "focal loss focusing parameter"})
    sampling: Literal["none", "weighted", "oversample"] = field(default="none", metadata={
        "help": "weighted: per-sample loss weights 1/count; oversample: the loader repeats minority samples "
                "(passed to ShardLoader as sampling=...)"})

    def __post_init__(self):
        _positive("imbalance.focal_gamma", self.focal_gamma, allow_zero=True)


# the built-in losses (hpctrain.train.losses.BUILTIN_LOSSES; named here so loading a config imports no torch)
LOSS_NAMES = ("cross_entropy", "focal", "mse", "mae")


@dataclass(kw_only=True, slots=True)
class LossConfig:
    module: str | None = field(default=None, metadata={
        "help": "the training loss: a built-in (cross_entropy, focal, mse, mae) or your own 'package.module:factory' "
                "called as factory(**loss.args) and returning a callable (outputs, targets) -> scalar tensor. "
                "null: imbalance.loss with its class weights"})
    args: dict[str, Any] = field(default_factory=dict, metadata={"help": "keyword arguments of the loss factory"})

    def __post_init__(self):
        if self.args and self.module is None:
            raise ConfigError("loss.args: only used with loss.module; set loss.module or remove loss.args")
        if self.module is not None and ":" not in self.module and self.module not in LOSS_NAMES:
            raise ConfigError(f"loss.module: got {self.module!r}, expected one of {list(LOSS_NAMES)} or "
                              "'package.module:factory'")


@dataclass(kw_only=True, slots=True)
class MetricsConfig:
    extra: list[str] = field(default_factory=list, metadata={
        "help": "validation metrics beyond the task's own (accuracy/macro F1, or MSE/MAE/R^2): built-ins (accuracy, "
                "macro_f1, mse, mae, r2) or 'package.module:function' taking (outputs (N, K), targets) as numpy "
                "arrays and returning a float; computed on the whole validation split, reported as val_<name>"})


@dataclass(kw_only=True, slots=True)
class AugmentationConfig:
    ops: list[dict] = field(default_factory=list, metadata={
        "help": "augmentation ops, in order, as hpctrain.kernels.pipeline.build_pipeline takes them "
                "(e.g. [{op: flip, p: 0.5}, {op: noise, std: 0.05}]); empty: none. Applied to training batches only"})


@dataclass(kw_only=True, slots=True)
class ImputationConfig:
    imputer: Path | None = field(default=None, metadata={
        "help": "fitted imputer file ('hpctrain impute fit'); applied to every batch in-process"})
    on_nan: Literal["error", "zero"] = field(default="error", metadata={
        "help": "without an imputer: error on NaN input (default), or replace NaN with 0"})


@dataclass(kw_only=True, slots=True)
class CheckpointConfig:
    every_steps: int = field(default=0, metadata={"help": "checkpoint every N optimizer steps (0: off)"})
    every_epoch: bool = field(default=True, metadata={"help": "checkpoint at the end of every epoch"})
    keep: int = field(default=3, metadata={
        "help": "keep the newest K step checkpoints (final.pt, written at the end, is kept apart)"})
    resume: bool = field(default=True, metadata={"help": "resume from the newest valid checkpoint in the run dir"})
    encrypt: Path | None = field(default=None, metadata={
        "help": "key file ('hpctrain keygen'): checkpoints are written AES-256-GCM encrypted; predict and export "
                "then need --key KEYFILE"})

    def __post_init__(self):
        _positive("checkpoint.every_steps", self.every_steps, allow_zero=True)
        _positive("checkpoint.keep", self.keep)


@dataclass(kw_only=True, slots=True)
class LoggingConfig:
    every_steps: int = field(default=10, metadata={"help": "write a step record to metrics.jsonl every N steps"})
    progress: bool = field(default=True, metadata={"help": "console progress bar (rank 0, only on a terminal)"})
    tensorboard: bool = field(default=False, metadata={"help": "also write TensorBoard logs under run.dir/tb"})
    plots: bool = field(default=True, metadata={"help": "PNG plots of loss, LR, metrics and the confusion matrix"})

    def __post_init__(self):
        _positive("logging.every_steps", self.every_steps)


# Measured with scripts/bench_comm.py on 2 ranks (docs/benchmarks.md, "Horovod tuning").
_HVD = HorovodKnobs()


@dataclass(kw_only=True, slots=True)
class CommConfig:
    backend: Literal["horovod", "torch", "mpi"] = field(default="horovod", metadata={
        "help": "gradient exchange: horovod (Horovod's allreduce of flat buckets), torch (torch.distributed "
                "gloo/nccl), mpi (mpi4py Allreduce of flat buckets); all overlapped with backward"})
    torch_backend: Literal["auto", "gloo", "nccl"] = field(default="auto", metadata={
        "help": "torch backend's process group: auto = nccl with CUDA, else gloo"})
    fp16_compression: bool = field(default=False, metadata={
        "help": "send gradients as float16 (horovod, torch); halves the bytes, costs precision"})
    backward_passes_per_step: int = field(default=1, metadata={
        "help": "gradient accumulation: local backward passes per exchange and optimizer step"})
    bucket_mb: float = field(default=4.0, metadata={
        "help": "mpi/torch: gradient bucket size in MB (mpi: also the largest single MPI message)"})
    timeout_s: int = field(default=60, metadata={
        "help": "fail-fast bound: collective timeout (torch) and Horovod stall shutdown, in seconds"})
    timeline: bool = field(default=False, metadata={
        "help": "horovod: write Horovod's timeline (a Chrome trace of every tensor's negotiation and allreduce) "
                "to RUN/monitor/timeline.json; open it in chrome://tracing or ui.perfetto.dev"})
    # Defaults measured with scripts/bench_comm.py (docs/benchmarks.md, "Horovod tuning");
    # an exported HOROVOD_* variable wins over these.
    horovod_cycle_time_ms: float = field(default=_HVD.cycle_time_ms, metadata={
        "help": "horovod: how often its background thread negotiates pending tensors (HOROVOD_CYCLE_TIME); lower "
                "answers sooner, higher leaves more CPU to the training threads"})
    horovod_fusion_mb: float = field(default=_HVD.fusion_mb, metadata={
        "help": "horovod: tensors ready in one cycle are copied into one buffer up to this size "
                "(HOROVOD_FUSION_THRESHOLD); 0 reduces each gradient bucket in place, with no copy"})
    horovod_cache_capacity: int = field(default=_HVD.cache_capacity, metadata={
        "help": "horovod: response cache entries (HOROVOD_CACHE_CAPACITY); a cached tensor is negotiated with a "
                "bit vector instead of its full description; 0 turns the cache off"})
    horovod_poll_us: float = field(default=_HVD.poll_us, metadata={
        "help": "horovod: > 0 makes the waiting training thread sleep this long between polls of an unfinished "
                "allreduce; 0 spins in hvd.synchronize, which measured faster on every setting tried"})
    horovod_autotune: bool = field(default=False, metadata={
        "help": "horovod: let HOROVOD_AUTOTUNE search cycle time and fusion during the run and log what it tried "
                "to RUN/monitor/horovod_autotune.csv (copy the best row into your cluster's config)"})

    def __post_init__(self):
        if self.timeline and self.backend != "horovod":
            raise ConfigError(f"comm.timeline: Horovod's timeline needs comm.backend=horovod, got {self.backend!r}; "
                              "set comm.backend=horovod or comm.timeline=false")
        _positive("comm.backward_passes_per_step", self.backward_passes_per_step)
        _positive("comm.bucket_mb", self.bucket_mb)
        _positive("comm.timeout_s", self.timeout_s)
        _positive("comm.horovod_cycle_time_ms", self.horovod_cycle_time_ms)
        _positive("comm.horovod_fusion_mb", self.horovod_fusion_mb, allow_zero=True)
        _positive("comm.horovod_cache_capacity", self.horovod_cache_capacity, allow_zero=True)
        _positive("comm.horovod_poll_us", self.horovod_poll_us, allow_zero=True)
        if self.fp16_compression and self.backend == "mpi":
            raise ConfigError("comm.fp16_compression: MPI has no float16 reduction; use comm.backend=horovod or "
                              "torch, or set comm.fp16_compression=false")


@dataclass(kw_only=True, slots=True)
class ParallelConfig:
    pipeline_stages: int = field(default=1, metadata={
        "help": "S: split the model's sequential blocks into S contiguous pipeline stages, one per rank; the world "
                "size W must be a multiple of S, giving W/S data-parallel replicas (rank s*W/S + r holds stage s of "
                "replica r). 1: data parallelism only. Needs comm.backend=torch (see docs/parallelism.md)"})
    microbatches: int = field(default=4, metadata={
        "help": "M: each rank's batch (data.batch_size) is cut into M microbatches that flow through the stages; "
                "must divide data.batch_size. Idle share of a step: (S-1)/(M+S-1). Ignored when pipeline_stages=1"})
    schedule: Literal["gpipe", "1f1b"] = field(default="gpipe", metadata={
        "help": "gpipe: all forwards, then all backwards; 1f1b: one forward, one backward in the steady state "
                "(the same bubble, activations of at most S microbatches held; needs microbatches >= "
                "pipeline_stages). Both are torch.distributed.pipelining schedules"})

    def __post_init__(self):
        _positive("parallel.pipeline_stages", self.pipeline_stages)
        _positive("parallel.microbatches", self.microbatches)


@dataclass(kw_only=True, slots=True)
class MonitorConfig:
    enabled: bool = field(default=True, metadata={
        "help": "sample every rank's resources and step timings into RUN/monitor/rank-R.jsonl and raise alerts "
                "(see docs/monitor.md)"})
    interval_s: float = field(default=5.0, metadata={"help": "seconds between samples of each rank"})
    gather_every_steps: int = field(default=50, metadata={
        "help": "every N optimizer steps the ranks' step times and alerts are gathered on rank 0 (the straggler "
                "check, the journal and the hook); also once at the end"})
    input_bound_fraction: float = field(default=0.3, metadata={
        "help": "input-bound alert: the share of step time spent waiting on the loader above which a rank is "
                "input-bound"})
    straggler_factor: float = field(default=1.5, metadata={
        "help": "straggler alert: a rank whose own step time (not counting the wait for the others) exceeds this "
                "many times the median of the ranks"})
    gpu_memory_fraction: float = field(default=0.95, metadata={
        "help": "GPU memory alert: used / total above this fraction"})
    leak_window: int = field(default=12, metadata={
        "help": "leak alert: the last N samples of host RSS that the slope test looks at"})
    leak_min_mb: float = field(default=64.0, metadata={
        "help": "leak alert: the least RSS growth (MB) over the window that counts as a leak"})
    leak_min_r: float = field(default=0.9, metadata={
        "help": "leak alert: the least correlation of RSS with time over the window (growth must be steady, "
                "not one jump)"})
    min_steps: int = field(default=5, metadata={
        "help": "alerts about step timings need at least this many steps in the samples they look at"})
    cooldown_s: float = field(default=300.0, metadata={
        "help": "the same alert for the same rank is not repeated within this many seconds"})
    hook: list[str] = field(default_factory=list, metadata={
        "help": "a command run (argv list, never through a shell) on rank 0 for each alert, with the alert as "
                "JSON in $HPCTRAIN_ALERT, e.g. [notify-send, hpctrain]; empty: none"})
    hook_timeout_s: float = field(default=30.0, metadata={"help": "the hook is killed after this many seconds"})

    def __post_init__(self):
        _positive("monitor.interval_s", self.interval_s)
        if self.interval_s < 0.05:
            raise ConfigError(f"monitor.interval_s: got {self.interval_s!r}, expected at least 0.05 (a sampler "
                              "that busy-loops costs the training it measures)")
        _positive("monitor.gather_every_steps", self.gather_every_steps)
        if not 0.0 < self.input_bound_fraction <= 1.0:
            raise ConfigError(f"monitor.input_bound_fraction: got {self.input_bound_fraction!r}, expected a "
                              "number in (0, 1]")
        if not (math.isfinite(self.straggler_factor) and self.straggler_factor > 1.0):
            raise ConfigError(f"monitor.straggler_factor: got {self.straggler_factor!r}, expected a number > 1")
        if not 0.0 < self.gpu_memory_fraction <= 1.0:
            raise ConfigError(f"monitor.gpu_memory_fraction: got {self.gpu_memory_fraction!r}, expected a number "
                              "in (0, 1]")
        if self.leak_window < 3:
            raise ConfigError(f"monitor.leak_window: got {self.leak_window}, expected at least 3 samples")
        _positive("monitor.leak_min_mb", self.leak_min_mb)
        _fraction("monitor.leak_min_r", self.leak_min_r, closed=True)
        _positive("monitor.min_steps", self.min_steps)
        _positive("monitor.cooldown_s", self.cooldown_s, allow_zero=True)
        _positive("monitor.hook_timeout_s", self.hook_timeout_s)
        if not all(isinstance(a, str) and a for a in self.hook):
            raise ConfigError(f"monitor.hook: got {self.hook!r}, expected a list of non-empty strings (the "
                              "command's argv, e.g. [notify-send, hpctrain])")


@dataclass(kw_only=True, slots=True)
class SlurmConfig:
    sbatch: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "sbatch options 'hpctrain submit' passes through ({reservation: maint, gres: 'gpu:a100:4', "
                "hold: true}); its --sbatch KEY=VALUE adds to them and wins on the same key; options with a "
                "typed flag (--time, --nodes...) are refused"})

    def __post_init__(self):
        from hpctrain.slurm.sbatch_options import parse_mapping

        parse_mapping(self.sbatch)  # a typo fails 'train --check' too, not first at submit time


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig, metadata={"help": "run name, dir, seed, length"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "shards and batching"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "architecture and transfer learning"})
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig, metadata={"help": "optimizer"})
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig, metadata={"help": "LR scaling and schedule"})
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig,
                                                 metadata={"help": "L1/L2, early stopping"})
    imbalance: ImbalanceConfig = field(default_factory=ImbalanceConfig, metadata={"help": "class imbalance"})
    loss: LossConfig = field(default_factory=LossConfig, metadata={"help": "the training loss"})
    metrics: MetricsConfig = field(default_factory=MetricsConfig, metadata={"help": "extra validation metrics"})
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig, metadata={"help": "augmentation"})
    imputation: ImputationConfig = field(default_factory=ImputationConfig, metadata={"help": "missing values"})
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig, metadata={"help": "checkpoints"})
    logging: LoggingConfig = field(default_factory=LoggingConfig, metadata={"help": "metrics and plots"})
    comm: CommConfig = field(default_factory=CommConfig, metadata={"help": "gradient exchange"})
    parallel: ParallelConfig = field(default_factory=ParallelConfig, metadata={
        "help": "pipeline and hybrid (pipeline x data) parallelism"})
    monitor: MonitorConfig = field(default_factory=MonitorConfig, metadata={
        "help": "per-rank resource sampling and alerts"})
    slurm: SlurmConfig = field(default_factory=SlurmConfig, metadata={
        "help": "site options for 'hpctrain submit' (the trainer ignores them)"})

    def __post_init__(self):
        if self.data.dir is None:
            raise ConfigError("data.dir: missing; set it to a shard directory written by 'hpctrain shard' "
                              "(e.g. --set data.dir=shards/digits)")
        if self.loss.module is not None:
            # these shape the built-in criterion only; silently dropping them would train another loss
            ignored = [k for k, on in (("imbalance.class_weights", self.imbalance.class_weights != "none"),
                                       ("imbalance.sampling=weighted", self.imbalance.sampling == "weighted"),
                                       ("imbalance.loss", self.imbalance.loss != "cross_entropy"),
                                       ("regularization.label_smoothing", self.regularization.label_smoothing > 0))
                       if on]
            if ignored:
                raise ConfigError(f"loss.module: set together with {', '.join(ignored)}, which only configure the "
                                  "built-in loss; pass them as loss.args (e.g. loss.module=cross_entropy with "
                                  "loss.args.label_smoothing=0.1) or drop loss.module")
        if self.model.freeze and self.model.init_from is None:
            raise ConfigError("model.freeze: freezing parameters without model.init_from trains a partly random "
                              "model; set model.init_from to a checkpoint")
        if self.parallel.pipeline_stages > 1:
            self._check_pipeline()

    def _check_pipeline(self) -> None:
        """What the pipeline runtime does not combine with, each with the key to change."""
        s = self.parallel.pipeline_stages
        if self.comm.backend != "torch":
            raise ConfigError(f"parallel.pipeline_stages={s} runs on torch.distributed (stage-to-stage sends and the "
                              f"per-stage gradient groups); got comm.backend={self.comm.backend!r}: set "
                              "comm.backend=torch")
        bad = [(k, fix) for k, on, fix in (
            ("comm.backward_passes_per_step", self.comm.backward_passes_per_step != 1,
             "set it to 1: parallel.microbatches already accumulates gradients over a batch"),
            ("comm.fp16_compression", self.comm.fp16_compression, "set it to false"),
            ("run.precision", self.run.precision != "fp32", "use run.precision=fp32"),
            ("run.compile", self.run.compile, "set run.compile=false"),
            ("regularization.l1", self.regularization.l1 > 0,
             "use regularization.weight_decay (L2), which acts on each stage's own parameters"),
        ) if on]
        if bad:
            raise ConfigError(f"{bad[0][0]}: not supported with parallel.pipeline_stages={s}; {bad[0][1]} "
                              "(or set parallel.pipeline_stages=1)")

    def to_dict(self) -> dict:
        return to_dict(self)


SECTIONS = ("run", "data", "model", "optimizer", "schedule", "regularization", "imbalance", "loss", "metrics",
            "augmentation", "imputation", "checkpoint", "logging", "comm", "parallel", "monitor", "slurm")


def load_config(path_or_dict: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()) -> TrainConfig:
    """Build a :class:`TrainConfig` from a YAML path or a mapping, then apply ``section.key=value`` overrides.

    Raises ConfigError naming the key for an unknown key, a wrong type or a bad value.
    """
    if isinstance(path_or_dict, Mapping):
        data = dict(path_or_dict)
    else:
        data = load_yaml(path_or_dict)
    data = apply_overrides(data, list(overrides))
    return from_mapping(TrainConfig, data)


REFERENCE_BEGIN = "<!-- generated by hpctrain.train.config.reference_markdown: do not edit by hand -->"
REFERENCE_END = "<!-- end of generated reference -->"


def reference_markdown() -> str:
    """The config reference of docs/training.md, generated from the field help texts."""
    import dataclasses

    out = [REFERENCE_BEGIN]
    for f in dataclasses.fields(TrainConfig):
        cls = type(f.default_factory())  # type: ignore[misc]
        out += ["", f"### `{f.name}`: {f.metadata.get('help', '')}", "", "| key | type | default | meaning |",
                "|---|---|---|---|"]
        for name, tp, default, help_ in field_docs(cls):
            shown = "runs/<run.name>" if (f.name, name) == ("run", "dir") else default
            tp = tp.replace("pathlib.", "").replace(" | ", " or ")
            out.append(f"| `{f.name}.{name}` | `{tp}` | `{shown!r}` | {help_.replace('|', '/')} |")
    out += ["", REFERENCE_END]
    return "\n".join(out) + "\n"
