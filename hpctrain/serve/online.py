"""``hpctrain update``: continue a finished run on new data, with replay of the old training
rows to limit forgetting, as a new run that records its parent.

The update is an ordinary training run: :func:`prepare_update` writes a mixed shard
directory (the new training rows plus a replay sample of the old ones, the new validation
rows) and a training config (``update.yaml``: the parent's config with ``model.init_from``
set to its final checkpoint). So it runs under every launcher ``hpctrain train`` runs under:
in-process, ``hpctrain launch -n N``, ``hpctrain submit NEW_RUN/update.yaml`` on Slurm.
:func:`update` does all of it and scores macro F1 on the old validation split and on the new
data, before (the parent) and after (the new run).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from hpctrain.errors import HpctrainError
from hpctrain.serve.options import LR_SCALE

CONFIG = "update.yaml"
PARENT = "parent.json"
REPORT = "update.json"


class UpdateError(HpctrainError):
    """An update cannot start with these inputs."""


def _rows(data_dir, split):
    from hpctrain.data.shards import iter_arrays

    xs, ys = [], []
    for _, x, y in iter_arrays(data_dir, split):
        xs.append(x)
        ys.append(y)
    return (np.concatenate(xs), np.concatenate(ys)) if ys else (None, None)


def prepare_update(run_dir, new_shards, out, *, replay: float = 0.2, epochs: int | None = None,
                   val_fraction: float = 0.2, seed: int = 0, lr_scale: float = LR_SCALE, overrides=()) -> Path:
    """Write ``out/data`` (mixed shards), ``out/update.yaml`` and ``out/parent.json``; return the config path."""
    import yaml

    from hpctrain.config import apply_overrides, to_dict
    from hpctrain.data.shards import Manifest, ShardWriter
    from hpctrain.fileio import atomic_write_json, atomic_write_text
    from hpctrain.predict import load_run
    from hpctrain.rundir import RunDir
    from hpctrain.serve.artifact import is_artifact
    from hpctrain.train.config import load_config

    from hpctrain.env import rank_info

    if rank_info().world_size > 1:
        # every rank would write the same mixed shards at once
        raise UpdateError("hpctrain update was started on several ranks (mpirun/srun); start it once and pass "
                          "-n N, or --prepare-only and then launch/submit NEW_RUN/update.yaml")
    if not 0.0 <= replay < 1.0:
        raise UpdateError(f"--replay {replay}: expected the share of old rows in the mixed training set, in [0, 1)")
    if not (lr_scale > 0 and math.isfinite(lr_scale)):
        raise UpdateError(f"--lr-scale {lr_scale}: expected a factor > 0 for the parent's optimizer.lr (e.g. 0.3)")
    if is_artifact(run_dir):
        raise UpdateError(f"{str(run_dir)!r} is a model artifact; update continues from a run dir (it needs the "
                          "run's checkpoint and training shards)")
    trained = load_run(run_dir)
    if trained.regression:
        raise UpdateError(f"{str(run_dir)!r} is a regression model; 'hpctrain update' mixes class-labelled "
                          "replay rows. Retrain with 'hpctrain train' and model.init_from on the new shards")
    old = trained.config
    out = Path(out)
    if RunDir(out).result.exists() or RunDir(out).checkpoints.exists():
        raise UpdateError(f"--out {str(out)!r} already holds a run; choose a new directory for the updated run")
    from hpctrain.secure.cliargs import refuse_encrypted_input

    # the mixed shards would be a decrypted copy of either input
    refuse_encrypted_input(new_shards, "update")
    refuse_encrypted_input(old.data.dir, "update")
    mnew = Manifest.load(new_shards)
    if tuple(mnew.schema.sample_shape) != trained.sample_shape:
        raise UpdateError(f"new shards {str(new_shards)!r} have sample shape {tuple(mnew.schema.sample_shape)}; the "
                          f"run was trained on {trained.sample_shape}: shard the new data with the same columns")
    old_train = _rows(old.data.dir, old.data.train_split)
    if old_train[0] is None and replay > 0:
        raise UpdateError(f"the run's training shards {str(old.data.dir)!r} have no {old.data.train_split!r} rows to "
                          "replay; restore them, or pass --replay 0")
    rng = np.random.default_rng(seed)
    x_tr, y_tr = _rows(new_shards, "train")
    x_va, y_va = _rows(new_shards, "val")
    if x_tr is None:
        # new data often arrives as one block (the demo's shifted holdout is all 'val'): split it
        x_all, y_all = _rows(new_shards, None)
        if x_all is None:
            raise UpdateError(f"new shards {str(new_shards)!r} have no rows")
        perm = rng.permutation(len(y_all))
        k = max(1, int(round(val_fraction * len(perm))))
        x_va, y_va, x_tr, y_tr = x_all[perm[:k]], y_all[perm[:k]], x_all[perm[k:]], y_all[perm[k:]]
    unknown = sorted(set(np.unique(y_tr).tolist()) - set(trained.classes))
    if unknown:
        raise UpdateError(f"new shards hold labels {unknown[:5]} the run has no class for (its classes: "
                          f"{trained.classes}); retrain with 'hpctrain train' and model.init_from instead")
    n_old = 0
    if replay > 0:
        n_old = min(len(old_train[1]), int(round(replay / (1 - replay) * len(y_tr))))
        pick = rng.choice(len(old_train[1]), n_old, replace=False)
        x_tr = np.concatenate([x_tr, old_train[0][pick]])
        y_tr = np.concatenate([y_tr, old_train[1][pick]])
    order = rng.permutation(len(y_tr))
    data = out / "data"
    with ShardWriter(data, feature_names=mnew.schema.feature_names, sample_shape=trained.sample_shape,
                     classes=trained.classes, class_names=mnew.schema.class_names, overwrite=True) as w:
        w.add(x_tr[order], y_tr[order], split="train")
        if x_va is not None and len(y_va):
            w.add(x_va, y_va, split="val")
    cfg = json.loads(json.dumps(to_dict(old)))
    if trained.preprocess.imputer is not None:
        trained.preprocess.imputer.save(data / "imputer.json")
        cfg["imputation"]["imputer"] = str((data / "imputer.json").resolve())
    cfg["run"]["dir"] = str(out.resolve())
    cfg["run"]["name"] = f"{cfg['run']['name']}-update"
    if epochs is not None:
        cfg["run"]["epochs"] = int(epochs)
    cfg["data"]["dir"] = str(data.resolve())
    cfg["data"]["train_split"] = "train"
    cfg["data"]["val_split"] = "val" if x_va is not None and len(y_va) else None
    cfg["model"]["init_from"] = str(Path(trained.checkpoint).resolve())
    # Fine-tuning steps smaller than the parent's: the weights are already good for the old
    # data, and a full-size step on a batch dominated by new rows walks away from them.
    cfg["optimizer"]["lr"] = float(cfg["optimizer"]["lr"]) * lr_scale
    cfg = apply_overrides(cfg, list(overrides))
    load_config(cfg)  # fails now, with the key, rather than in every rank
    path = out / CONFIG
    atomic_write_text(path, "# written by 'hpctrain update'; run with hpctrain train / launch / submit\n"
                      + yaml.safe_dump(cfg, sort_keys=False))
    atomic_write_json(out / PARENT, {
        "parent_run": str(Path(run_dir).resolve()), "parent_checkpoint": str(Path(trained.checkpoint).resolve()),
        "new_shards": str(Path(new_shards).resolve()), "replay": replay, "seed": seed,
        "rows": {"new_train": int(len(y_tr) - n_old), "replayed_old": int(n_old),
                 "new_val": int(0 if y_va is None else len(y_va))}})
    return path


def _f1(trained, x, y) -> float | None:
    from hpctrain.serve.compress import _scores

    return None if x is None else _scores(trained, x, y)["macro_f1"]


def update(run_dir, new_shards, out, *, replay: float = 0.2, epochs: int | None = None, ranks: int = 1,
           val_fraction: float = 0.2, seed: int = 0, lr_scale: float = LR_SCALE, overrides=()) -> dict:
    """Prepare, train (in-process, or ``ranks`` MPI ranks through ``hpctrain launch``), score; the report."""
    from hpctrain.train.config import load_config

    cfg_path = prepare_update(run_dir, new_shards, out, replay=replay, epochs=epochs, val_fraction=val_fraction,
                              seed=seed, lr_scale=lr_scale, overrides=overrides)
    out = Path(out)
    if ranks == 1:
        from hpctrain.train.trainer import train

        res = train(load_config(cfg_path))
        if res.status != "completed":
            raise UpdateError(f"the update run ended {res.status!r}; see {str(out)!r} and resume it with "
                              f"'hpctrain train {cfg_path}'")
    else:
        argv = [sys.executable, "-m", "hpctrain", "launch", "-n", str(ranks), "--", sys.executable, "-m",
                "hpctrain", "train", str(cfg_path)]
        rc = subprocess.run(argv, check=False).returncode
        if rc != 0:
            raise UpdateError(f"the update training exited {rc}; see {str(out)!r} and resume it with "
                              f"'hpctrain launch -n {ranks} -- hpctrain train {cfg_path}'")
    return score_update(out)


def score_update(out) -> dict:
    """Macro F1 of the parent and of the finished update run ``out``, on the parent's validation
    split and on the new validation rows; written to ``out/update.json`` and returned. For an
    update trained elsewhere (``--prepare-only``, then ``hpctrain submit``)."""
    from hpctrain.fileio import atomic_write_json
    from hpctrain.predict import load_run

    out = Path(out)
    try:
        parent_info = json.loads((out / PARENT).read_text(encoding="utf-8"))
        parent_run = parent_info["parent_run"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UpdateError(f"{str(out)!r} has no readable {PARENT} ({e}); it was not prepared by 'hpctrain update'") \
            from None
    parent, child = load_run(parent_run), load_run(out)
    old_val = _rows(parent.config.data.dir, parent.config.data.val_split or "val")
    new_val = _rows(out / "data", "val")
    report = {"parent": parent_info,
              "before": {"old_val_macro_f1": _f1(parent, *old_val), "new_macro_f1": _f1(parent, *new_val)},
              "after": {"old_val_macro_f1": _f1(child, *old_val), "new_macro_f1": _f1(child, *new_val)},
              "config": str(out / CONFIG)}
    atomic_write_json(out / REPORT, report)
    return report
