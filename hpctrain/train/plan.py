"""What a training config means on a given world, checked before any process group starts:
the per-rank batch, accumulation, global batch and scaled LR (:class:`Plan`), and the checks
that need the world size or the file system (shards, model, task, imputer, key files).
:mod:`hpctrain.train.config` holds the typed sections and their own checks only."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from hpctrain.errors import ConfigError, HpctrainError
from hpctrain.train.config import TrainConfig


@dataclass(frozen=True, slots=True)
class Plan:
    """What the config means on this world: checked before any process group starts."""

    world_size: int
    batch_size: int  # per rank per backward pass
    accum: int
    global_batch: int  # samples per optimizer step over all ranks
    lr: float  # peak LR after the scaling rule
    stages: int = 1  # pipeline stages per replica (parallel.pipeline_stages)
    microbatches: int = 1  # per batch, when stages > 1

    @property
    def replicas(self) -> int:
        """Data-parallel replicas: the ranks that read different data (the world size without a pipeline)."""
        return self.world_size // self.stages


def check_runtime(cfg: TrainConfig, world_size: int) -> Plan:
    """Checks that need the world size or the file system. Pure apart from reading paths."""
    from hpctrain.train.data import load_keys

    load_keys(cfg)  # a key file that is missing or too open stops here, before any process group
    from hpctrain.train.pipeline import check_layout, check_microbatches

    stages = cfg.parallel.pipeline_stages
    # the ranks that read different data: all of them, or one per pipeline
    dp = check_layout(world_size, stages) if stages > 1 else world_size
    who = "world size" if stages == 1 else f"data-parallel replicas (world size {world_size} / {stages} stages)"
    accum = cfg.comm.backward_passes_per_step
    batch = cfg.data.batch_size
    if cfg.data.global_batch_size is not None:
        per_step = dp * accum
        if cfg.data.global_batch_size % per_step:
            raise ConfigError(
                f"data.global_batch_size: {cfg.data.global_batch_size} is not divisible by {who} {dp} "
                f"x comm.backward_passes_per_step {accum} = {per_step}; choose a multiple of {per_step}")
        batch = cfg.data.global_batch_size // per_step
    data_dir = Path(cfg.data.dir)
    if not data_dir.is_dir():
        raise ConfigError(f"data.dir: {str(data_dir)!r} is not a directory; run 'hpctrain shard' first or fix "
                          "the path (relative paths are from the current directory)")
    if not (data_dir / "manifest.json").is_file():
        raise ConfigError(f"data.dir: {str(data_dir)!r} has no manifest.json; it is not a shard directory "
                          "(write one with 'hpctrain shard')")
    run_dir = Path(cfg.run.dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run.dir: {str(run_dir)!r} exists and is not a directory; choose another run.dir "
                          "(or run.name)")
    rows = check_shards(data_dir, [cfg.data.train_split, cfg.data.val_split])
    train_rows = rows.get(cfg.data.train_split, 0)
    if train_rows // dp < batch:  # the trainer drops the last partial batch
        ranks = f"{dp} rank(s)" if stages == 1 else f"{dp} replica(s)"
        raise ConfigError(f"data.batch_size: the {cfg.data.train_split!r} split has {train_rows} rows, too few for "
                          f"{ranks} x batch {batch} (0 batches per epoch); lower the batch size or use "
                          "fewer ranks")
    if stages > 1:
        check_microbatches(cfg.parallel.microbatches, batch, stages, cfg.parallel.schedule)
    for key, p in (("model.init_from", cfg.model.init_from), ("imputation.imputer", cfg.imputation.imputer)):
        if p is not None and not Path(p).exists():
            raise ConfigError(f"{key}: {str(p)!r} does not exist; fix the path or remove the key")
    if cfg.imputation.imputer is not None:
        _check_imputer(Path(cfg.imputation.imputer))
    if cfg.augmentation.ops:
        try:
            from hpctrain.kernels.pipeline import build_pipeline
        except ImportError as e:
            raise ConfigError(f"augmentation.ops: the augmentation kernels are not importable ({e}); remove "
                              "augmentation.ops or reinstall hpctrain (pip install -e .)") from e
        try:
            build_pipeline(list(cfg.augmentation.ops), 0)
        except ConfigError as e:
            raise ConfigError(f"augmentation.ops: {e}") from None
    if cfg.regularization.early_stopping and cfg.data.val_split is None:
        raise ConfigError("regularization.early_stopping: needs a validation split; set data.val_split")
    if cfg.run.precision == "fp16":
        _check_fp16(cfg.run.device)
    _check_task(cfg, data_dir)
    if cfg.model.module is not None or cfg.loss.module is not None or cfg.metrics.extra:
        if cfg.metrics.extra and cfg.data.val_split is None:
            raise ConfigError("metrics.extra: validation metrics need a validation split; set data.val_split")
        check_model(cfg)
    if stages > 1:
        check_pipeline_model(cfg, stages)
    lr = cfg.optimizer.lr * (dp if cfg.schedule.scale_lr else 1)
    if stages == 1:
        return Plan(world_size=world_size, batch_size=batch, accum=accum, global_batch=batch * world_size * accum,
                    lr=lr)
    return Plan(world_size=world_size, batch_size=batch, accum=accum, global_batch=batch * dp * accum, lr=lr,
                stages=stages, microbatches=cfg.parallel.microbatches)


def check_pipeline_model(cfg: TrainConfig, stages: int) -> list[int]:
    """Build the model on CPU and split it as the trainer will: a model that cannot be split, or
    fewer sequential blocks than stages, fails here. Returns the stage boundaries."""
    import torch

    from hpctrain.train.data import describe
    from hpctrain.train.models import model_from_config
    from hpctrain.train.pipeline import block_costs, sequential_blocks, split_balanced, stage_names

    info = describe(cfg.data.dir, cfg.data.train_split, cfg.data.val_split)
    rng = torch.get_rng_state()  # building a model draws random weights: leave the caller's stream alone
    try:
        model = model_from_config(cfg.model, info.sample_shape, info.num_outputs, info.regression)
    finally:
        torch.set_rng_state(rng)
    blocks = sequential_blocks(model)
    if len(blocks) < stages:
        what = cfg.model.module or f"model.kind={cfg.model.kind}"
        raise ConfigError(f"parallel.pipeline_stages ({stages}) exceeds the {len(blocks)} sequential block(s) of "
                          f"{what} (a block is a layer with weights, with the parameter-free layers after it); use "
                          f"at most {len(blocks)} stages or a deeper model (e.g. more model.hidden layers)")
    bounds = split_balanced(block_costs(blocks), stages)
    stage_names(model, blocks, bounds)  # every parameter lands in a stage
    return bounds


def check_shards(data_dir: Path, splits: Sequence[str | None]) -> dict[str, int]:
    """Open every shard of ``splits`` and check its datasets against the manifest, so a missing,
    truncated or foreign shard stops every rank here, before a process group exists, rather than
    one rank mid-epoch. Header reads only (no checksum: that reads every byte; 'hpctrain shard
    verify' does it). Returns the rows of each of ``splits``."""
    from hpctrain.data.h5io import open_shard
    from hpctrain.data.shards import Manifest, ShardError, check_datasets

    rows: dict[str, int] = {}
    try:
        m = Manifest.load(data_dir)
        for s in m.shards:
            if s.split in splits:
                with open_shard(m, s) as f:
                    check_datasets(m, s, f)
                rows[s.split] = rows.get(s.split, 0) + s.rows
    except ShardError as e:
        raise ConfigError(f"data.dir: {e}") from None
    return rows


REGRESSION_MONITORS = ("val_r2", "val_mse", "val_mae", "val_loss")


def monitor_for(cfg: TrainConfig, regression: bool) -> str:
    """The monitored metric: with regression, the classification default stands for val_loss."""
    m = cfg.regularization.monitor
    return m if not regression or m in REGRESSION_MONITORS else "val_loss"


def _check_task(cfg: TrainConfig, data_dir: Path) -> None:
    from hpctrain.data.shards import Manifest

    regression = Manifest.load(data_dir).schema.regression
    held = "regression" if regression else "classification"
    if cfg.data.task not in ("auto", held):
        fix = ("re-shard with 'hpctrain shard INPUT --task regression'" if cfg.data.task == "regression"
               else "set data.task=regression (or auto)")
        raise ConfigError(f"data.task: {cfg.data.task} asked, but {str(data_dir)!r} holds {held} labels; {fix}")
    if not regression:
        if cfg.regularization.monitor in ("val_r2", "val_mse", "val_mae"):
            raise ConfigError(f"regularization.monitor: {cfg.regularization.monitor} is a regression metric and "
                              "these shards hold class labels; use val_macro_f1, val_accuracy or val_loss")
        return
    bad = [(k, v) for k, v, default in (
        ("imbalance.class_weights", cfg.imbalance.class_weights, "none"),
        ("imbalance.sampling", cfg.imbalance.sampling, "none"),
        ("imbalance.loss", cfg.imbalance.loss, "cross_entropy"),
        ("regularization.label_smoothing", cfg.regularization.label_smoothing, 0.0)) if v != default]
    if bad:
        raise ConfigError(f"{bad[0][0]}: {bad[0][1]!r} is for class labels; these shards hold regression targets: "
                          "remove it (the regression loss is loss.module, default mse)")
    if cfg.loss.module in ("cross_entropy", "focal"):
        raise ConfigError(f"loss.module: {cfg.loss.module} is a classification loss; these shards hold regression "
                          "targets: use mse, mae or your own")
    if cfg.regularization.monitor == "val_accuracy":  # the default val_macro_f1 stands for val_loss here
        raise ConfigError(f"regularization.monitor: {cfg.regularization.monitor} is a classification metric; with "
                          f"regression targets use one of {list(REGRESSION_MONITORS)}")


def _check_fp16(device: str) -> None:
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        raise ConfigError("run.precision=fp16: float16 training needs CUDA (its gradient scaler and fast fp16 "
                          "kernels are CUDA-only; on CPU fp16 autocast is slow and unscaled gradients underflow); "
                          "use run.precision=bf16 on CPU, or run on a GPU")


def check_model(cfg: TrainConfig) -> None:
    """Build the configured model (and loss) and run one small batch of the training split through
    them on CPU, so an import error, a wrong factory signature or an output that does not fit the
    labels is a one-line error here, at --check time, not a traceback on every rank later."""
    import numpy as np
    import torch

    from hpctrain.data.shards import iter_arrays
    from hpctrain.train.data import describe
    from hpctrain.train.losses import loss_from_config
    from hpctrain.train.models import check_output, model_from_config

    from hpctrain.train.data import load_keys

    load_keys(cfg)
    info = describe(cfg.data.dir, cfg.data.train_split, cfg.data.val_split)
    rng = torch.get_rng_state()  # building a model draws random weights: leave the caller's stream alone
    try:
        model = model_from_config(cfg.model, info.sample_shape, info.num_outputs, info.regression)
        _, x, y = next(iter_arrays(cfg.data.dir, split=cfg.data.train_split))
        x, y = torch.from_numpy(np.ascontiguousarray(x[:2])), torch.from_numpy(np.ascontiguousarray(y[:2]))
        key = "model.module" if cfg.model.module is not None else "model.kind"
        what = (f"the {info.targets} regression target(s)" if info.regression
                else f"the {info.num_classes} classes of the labels")
        out = check_output(model.train(), x, info.num_outputs, key, what)
        if cfg.loss.module is not None:
            target = y if info.regression else torch.searchsorted(torch.tensor(info.classes, dtype=torch.int64), y)
            loss = loss_from_config(cfg.loss, num_outputs=info.num_outputs)
            try:
                value = loss(out, target)
            except Exception as e:  # noqa: BLE001 - user code: one line naming the key
                raise ConfigError(f"loss.module: {cfg.loss.module!r} on outputs {tuple(out.shape)} and targets "
                                  f"{tuple(target.shape)} {target.dtype} raised {type(e).__name__}: {e}") from None
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise ConfigError(f"loss.module: {cfg.loss.module!r} returned "
                                  f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}"
                                  ", expected a scalar tensor (reduce over the batch)")
        if cfg.metrics.extra:
            from hpctrain.train.metrics import compute_metrics, resolve_metrics

            target = y if info.regression else torch.searchsorted(torch.tensor(info.classes, dtype=torch.int64), y)
            try:
                compute_metrics(resolve_metrics(cfg.metrics.extra), out.float().numpy(), target.numpy())
            except ConfigError:
                raise
            except HpctrainError as e:
                raise ConfigError(str(e)) from None
    finally:
        torch.set_rng_state(rng)


def _check_imputer(path: Path) -> None:
    """Load the imputer the way training will, so a corrupt file fails --check too."""
    try:
        from hpctrain.kernels.impute import Imputer
    except ImportError as e:
        raise ConfigError(f"imputation.imputer: the imputation kernels are not importable ({e})") from None
    try:
        Imputer.load(path)
    except HpctrainError as e:
        raise ConfigError(f"imputation.imputer: {e}") from None


def frozen_names(patterns: Sequence[str], names: Sequence[str]) -> list[str]:
    """Names matched by any glob pattern; a pattern matching nothing is an error (a typo freezes nothing)."""
    out = []
    for pat in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise ConfigError(f"model.freeze: pattern {pat!r} matches no parameter; parameters are: "
                              f"{', '.join(names)}")
        out += hits
    return sorted(set(out))
