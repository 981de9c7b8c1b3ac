"""The model artifact: a directory that holds everything needed to predict, and no pickle.

    MODEL_DIR/
      artifact.json                 what the model is: its config, classes, input schema, imputer
                                    statistics, training metrics, provenance, and the sha256 of
                                    every other file in the directory
      model-<sha256[:16]>.safetensors   the weights (safetensors: loading cannot run code)

The weight file is named by its content and ``artifact.json`` is replaced last, atomically, so
a reader (``hpctrain serve --watch``) sees the old artifact or the new one, never a mix: the
JSON is the single switch. Every load checks the sha256, so a changed or truncated weight
file is refused with its name instead of predicting with corrupt weights.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from hpctrain.errors import HpctrainError

FORMAT = "hpctrain-model"
FORMAT_VERSION = 1
# the identity the weight file is encrypted under (its name carries a digest, unknown until written)
WEIGHTS_IDENTITY = "model-weights"
MANIFEST = "artifact.json"


class ArtifactError(HpctrainError):
    """A model artifact cannot be written or read."""


def is_artifact(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def fingerprint(path: str | Path) -> tuple[int, int] | None:
    """Changes whenever the artifact is replaced (the manifest is always written last)."""
    try:
        st = os.stat(Path(path) / MANIFEST)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ino)


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("hpctrain", "torch", "numpy", "safetensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _training_facts(run_dir: Path) -> dict:
    """Versions and git revision recorded by the trainer (config.resolved.json), when present."""
    from hpctrain.rundir import RunDir

    d = RunDir(run_dir).read_resolved()
    if not isinstance(d, dict):
        return {}
    return {"versions": d.get("versions"), "git_revision": d.get("git_revision")}


def _schema(cfg, sample_shape: tuple[int, ...]) -> dict:
    """Feature and class names from the training shards' manifest, when it can still be read."""
    from hpctrain.data.shards import Manifest

    names = class_names = None
    try:
        m = Manifest.load(cfg.data.dir)
        names = list(m.schema.feature_names) if m.schema.feature_names else None
        class_names = list(m.schema.class_names) if m.schema.class_names else None
    except (HpctrainError, OSError):
        pass  # the shards may be gone by export time; names are informative only
    return {"feature_names": names, "class_names": class_names}


def _safe_json(obj: Any) -> Any:
    """Metrics may hold NaN (an undefined F1); JSON has no NaN, so they become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _safe_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_safe_json(v) for v in obj]
    return obj


def write_artifact(out: str | Path, *, state: dict, train_config: dict, sample_shape, classes, class_names,
                   feature_names, imputer: dict | None, on_nan: str, metrics: dict, provenance: dict,
                   extra: dict | None = None, force: bool = False, targets: int = 0, key=None) -> Path:
    """Write an artifact directory (weights first, manifest last). ``state`` maps names to tensors.
    With ``key`` (a :class:`hpctrain.secure.keys.Key`) the weight file is the encrypted container
    around the safetensors bytes, serialised in memory; loading it then needs that key."""
    from hpctrain.extras import require
    from hpctrain.fileio import atomic_path, atomic_write_json, fsync_dir, sha256_file

    save_file = require("safetensors.torch", "a model artifact (export, compress)").save_file

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"--out {str(out)!r} is a file; give a directory for the model artifact")
    if out.is_dir() and any(out.iterdir()):
        if not is_artifact(out):
            raise ArtifactError(f"--out {str(out)!r} exists and is not a model artifact; choose a new or empty "
                                "directory")
        if not force:
            raise ArtifactError(f"--out {str(out)!r} already holds an artifact; pass --force to replace it "
                                "(a server watching it swaps the new one in)")
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    staging = out / ".weights.staging"
    with atomic_path(staging) as tmp:
        if key is None:
            save_file(tensors, str(tmp), metadata={"format": FORMAT})
        else:
            from hpctrain.secure.container import write_encrypted

            data = require("safetensors.torch", "a model artifact").save(tensors, metadata={"format": FORMAT})
            with open(tmp, "wb") as f:
                write_encrypted(f, data, key, WEIGHTS_IDENTITY)
    digest = sha256_file(staging)
    name = f"model-{digest[:16]}.safetensors"
    os.replace(staging, out / name)
    fsync_dir(out)
    old = _read_manifest(out) if is_artifact(out) else None
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "weights": {"file": name, "sha256": digest, "bytes": (out / name).stat().st_size,
                    **({"encryption": {"cipher": "AES-256-GCM", "container": 1, "key_id": key.key_id}}
                       if key is not None else {})},
        "model": train_config.get("model"), "train_config": train_config,
        "sample_shape": [int(v) for v in sample_shape], "classes": [int(c) for c in classes],
        "class_names": class_names, "targets": int(targets),  # targets > 0: a regression model
        "input_schema": {"dtype": "float32", "sample_shape": [int(v) for v in sample_shape],
                         "n_features": int(math.prod(sample_shape)), "feature_names": feature_names,
                         "missing": "imputed" if imputer is not None else
                         ("set to 0" if on_nan == "zero" else "rejected")},
        "imputer": imputer, "on_nan": on_nan, "metrics": _safe_json(metrics), "provenance": _safe_json(provenance),
    }
    if extra:
        manifest.update(_safe_json(extra))
    atomic_write_json(out / MANIFEST, manifest)
    if old is not None:
        prev = old.get("weights", {}).get("file")
        if isinstance(prev, str) and prev != name and "/" not in prev:
            (out / prev).unlink(missing_ok=True)
    return out


def export_run(run_dir: str | Path, out: str | Path, *, force: bool = False, key=None) -> dict:
    """``hpctrain export RUN --out DIR``: the run's final weights and everything to use them."""
    from hpctrain.config import to_dict
    from hpctrain.trained import load_run_dir

    if is_artifact(run_dir):
        raise ArtifactError(f"{str(run_dir)!r} is already a model artifact; copy the directory instead")
    trained = load_run_dir(run_dir)
    cfg = trained.config
    imp = trained.preprocess.imputer
    schema = _schema(cfg, trained.sample_shape)
    run = Path(trained.run_dir).resolve()
    prov = {"run_dir": str(run), "checkpoint": str(Path(trained.checkpoint).resolve()),
            "step": trained.result.get("step"), "epoch": trained.result.get("epoch"),
            "training": _training_facts(run), "exported_with": _versions()}
    path = write_artifact(out, state=trained.model.state_dict(), train_config=json.loads(json.dumps(to_dict(cfg))),
                          sample_shape=trained.sample_shape, classes=trained.classes,
                          class_names=schema["class_names"], feature_names=schema["feature_names"],
                          imputer=imp.to_json() if imp is not None else None, on_nan=cfg.imputation.on_nan,
                          metrics=trained.result.get("metrics") or {}, provenance=prov, force=force,
                          targets=trained.targets, key=key)
    m = _read_manifest(path)
    return {"out": str(path), "weights": m["weights"]["file"], "bytes": m["weights"]["bytes"],
            "params": sum(int(t.numel()) for t in trained.model.state_dict().values())}


def _read_manifest(path: Path) -> dict:
    p = Path(path) / MANIFEST
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{str(path)!r} has no {MANIFEST}; it is not a model artifact (make one with "
                            "'hpctrain export RUN --out DIR')") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{str(p)!r} is unreadable ({e}); re-export the model") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ArtifactError(f"{str(p)!r} is not an hpctrain model manifest (format {FORMAT!r} missing); "
                            "re-export the model")
    if type(d.get("version")) is not int or d["version"] > FORMAT_VERSION:
        raise ArtifactError(f"{str(p)!r} has version {d.get('version')!r}; this hpctrain reads up to "
                            f"{FORMAT_VERSION}: upgrade hpctrain or re-export with this one")
    return d


def read_manifest(path: str | Path) -> dict:
    return _read_manifest(Path(path))


def load_weights(path: str | Path, manifest: dict) -> dict:
    """The state dict, after checking the weight file against the sha256 in the manifest."""
    from hpctrain.extras import require
    from hpctrain.fileio import sha256_file

    SafetensorError = require("safetensors", "loading a model artifact").SafetensorError
    load_file = require("safetensors.torch", "loading a model artifact").load_file

    w = manifest.get("weights")
    if not isinstance(w, dict) or not isinstance(w.get("file"), str) or "/" in w["file"] or w["file"] in ("", ".."):
        raise ArtifactError(f"{str(Path(path) / MANIFEST)!r} names no weight file; re-export the model")
    f = Path(path) / w["file"]
    from hpctrain.secure.keys import check_trusted_location

    check_trusted_location(f, "model artifact")
    if not f.is_file():
        raise ArtifactError(f"weight file {str(f)!r} is missing; the artifact is incomplete: re-export the model")
    got = sha256_file(f)
    if got != w.get("sha256"):
        raise ArtifactError(f"weight file {str(f)!r} has sha256 {got[:16]}..., artifact.json records "
                            f"{str(w.get('sha256'))[:16]}...: the file was changed or corrupted; re-export the model")
    enc = w.get("encryption")
    try:
        if enc:
            from hpctrain.secure import keyring
            from hpctrain.secure.container import decrypt_file
            from hpctrain.secure.keys import SecurityError

            try:
                data = decrypt_file(f, keyring.get(str(enc.get("key_id")), f"model artifact {str(path)!r}"),
                                    WEIGHTS_IDENTITY)
            except SecurityError as e:
                raise ArtifactError(str(e)) from None
            return require("safetensors.torch", "loading a model artifact").load(data)
        return load_file(str(f))
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"weight file {str(f)!r} is not a readable safetensors file ({e}); re-export") from None


def load_artifact(path: str | Path):
    """An artifact directory as a :class:`hpctrain.trained.TrainedRun` (eval mode, CPU)."""
    from hpctrain.train.config import load_config
    from hpctrain.trained import TrainedRun
    from hpctrain.train.data import Preprocess

    path = Path(path)
    m = _read_manifest(path)
    try:
        cfg = load_config(m["train_config"])
        classes = [int(c) for c in m["classes"]]
        shape = tuple(int(v) for v in m["sample_shape"])
        targets = int(m.get("targets") or 0)
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{str(path / MANIFEST)!r} is malformed ({type(e).__name__}: {e}); re-export") from None
    except HpctrainError as e:
        raise ArtifactError(f"{str(path / MANIFEST)!r}: its train_config is invalid ({e}); re-export") from None
    state = load_weights(path, m)
    model = build_model(m, cfg, shape, targets or len(classes), state, regression=targets > 0)
    imputer = None
    if m.get("imputer") is not None:
        from hpctrain.kernels.impute import Imputer

        imputer = Imputer.from_json(m["imputer"], where=f"the imputer statistics in {str(path / MANIFEST)!r}")
    prep = Preprocess(classes, None, m.get("on_nan") or cfg.imputation.on_nan, [], cfg.run.seed, 0)
    prep.imputer = imputer
    result = {"status": "completed", "metrics": m.get("metrics") or {},
              "step": (m.get("provenance") or {}).get("step"), "artifact": m}
    return TrainedRun(path, path / m["weights"]["file"], result, cfg, classes, shape, model, prep, targets)


def build_model(manifest: dict, cfg, shape, n_classes: int, state: dict, regression: bool = False):
    """The float model of the config, or its compressed form when the manifest says so.
    ``n_classes`` is the number of outputs (the regression targets when ``regression``)."""
    from hpctrain.train.models import model_from_config

    model = model_from_config(cfg.model, shape, n_classes, regression)
    comp = manifest.get("compression")
    if comp:
        from hpctrain.serve.packing import restore

        model = restore(model, comp, state)
    else:
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise ArtifactError(f"the weights in {manifest['weights']['file']!r} do not fit the model in "
                                f"artifact.json ({first}); re-export the model") from None
    model.eval()
    return model


def load_model(path: str | Path):
    """A run directory or an artifact directory, whichever ``path`` is."""
    from hpctrain.trained import load_run_dir

    return load_artifact(path) if is_artifact(path) else load_run_dir(path)
