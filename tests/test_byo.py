"""Issue 19 in one process: a model and a loss named by import path (a package outside
hpctrain/: docs/examples/byo), one-line errors at --check, and the session API's exact resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "examples" / "byo"


@pytest.fixture(autouse=True, scope="module")
def example_on_path():
    sys.path.insert(0, str(EXAMPLE))
    yield
    sys.path.remove(str(EXAMPLE))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from slurm_helpers import make_blobs

    return make_blobs(tmp_path_factory.mktemp("byo") / "blobs", train=240, val=60, rows_per_shard=40)


def cfg(data_dir, run_dir, **sections):
    from hpctrain.train.config import load_config

    base = {"run": {"name": "byo", "dir": str(run_dir), "epochs": 3, "seed": 3},
            "data": {"dir": str(data_dir), "batch_size": 16, "prefetch": 0},
            "model": {"module": "byo_example.model:build", "args": {"width": 16, "blocks": 1, "dropout": 0.1}},
            "optimizer": {"name": "adamw", "lr": 0.01},
            "checkpoint": {"every_steps": 5, "keep": 50},
            "logging": {"every_steps": 5, "plots": False, "progress": False},
            "comm": {"backend": "mpi"}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return load_config(base)


def test_a_model_from_an_import_path_trains_and_resumes_bit_for_bit(tmp_path, data):
    from hpctrain.train.checkpoint import load
    from hpctrain.train.trainer import train

    full = train(cfg(data, tmp_path / "full"))
    assert full.status == "completed" and full.metrics["val_accuracy"] > 0.9
    model = load(tmp_path / "full" / "checkpoints" / "final.pt")["model"]
    assert any(k.startswith("blocks.0.fc1") for k in model)  # the user's architecture, not a built-in

    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] == 9

    c = cfg(data, tmp_path / "cut")
    assert train(c, stop_requested=stop).status == "interrupted"
    assert train(c).status == "completed"
    a = load(tmp_path / "full" / "checkpoints" / "final.pt")["model"]
    b = load(tmp_path / "cut" / "checkpoints" / "final.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_builtin_kind_through_the_registry_is_the_same_model():
    from hpctrain.train.models import BUILTIN_MODELS, build_model

    torch.manual_seed(0)
    a = BUILTIN_MODELS["mlp"](sample_shape=(6,), num_outputs=3, hidden=[8])
    torch.manual_seed(0)
    b = build_model("mlp", (6,), 3, hidden=[8])
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_losses_by_name_and_by_import_path(tmp_path, data):
    from hpctrain.train.config import load_config
    from hpctrain.train.losses import loss_from_config

    out, y = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    ce = loss_from_config(load_config({"data": {"dir": "x"}, "loss": {"module": "cross_entropy"}}).loss)
    assert torch.equal(ce(out, y), torch.nn.functional.cross_entropy(out, y))
    mse = loss_from_config(load_config({"data": {"dir": "x"}, "loss": {"module": "mse"}}).loss)
    t = torch.randn(5)
    assert torch.equal(mse(out[:, :1], t), torch.nn.functional.mse_loss(out[:, 0], t))
    mae = loss_from_config(load_config({"data": {"dir": "x"}, "loss": {"module": "mae"}}).loss)
    assert torch.equal(mae(out[:, :1], t), torch.nn.functional.l1_loss(out[:, 0], t))
    # a user's loss by import path, trained with
    (tmp_path / "myloss.py").write_text(textwrap.dedent("""
        import torch.nn.functional as F

        def make(*, scale=1.0):
            return lambda out, y: scale * F.cross_entropy(out, y)
    """))
    sys.path.insert(0, str(tmp_path))
    try:
        from hpctrain.train.trainer import train

        res = train(cfg(data, tmp_path / "run", loss={"module": "myloss:make", "args": {"scale": 2.0}},
                        run={"epochs": 1}))
        assert res.status == "completed" and res.metrics["val_accuracy"] > 0.6
    finally:
        sys.path.remove(str(tmp_path))


BAD = {
    "does_not_import": ({"module": "no_such_pkg.models:build"}, "model.module: cannot import module 'no_such_pkg"),
    "no_attribute": ({"module": "byo_example.model:nope"}, "model.module: module 'byo_example.model' has no "
                                                          "attribute 'nope'"),
    "wrong_signature": ({"module": "badmodels:positional"}, "model.module: 'badmodels:positional'"),
    "not_a_module": ({"module": "badmodels:not_a_module"}, "returned a dict, expected a torch.nn.Module"),
    "wrong_output": ({"module": "byo_example.model:build", "args": {"width": 8}, },
                     "model.module: the model maps a batch of shape (2, 6) to (2, 5), but the 3 classes"),
    "raises": ({"module": "badmodels:raises"}, "model.module: 'badmodels:raises' raised ValueError: no"),
    "bad_spec": ({"module": "byo_example.model"}, "model.module: got 'byo_example.model', expected 'package.module"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_models_are_one_line_errors_at_check(tmp_path, data, case):
    """Through the real CLI: 'hpctrain train --check' exits 2 with one line naming the key."""
    import yaml

    (tmp_path / "badmodels.py").write_text(textwrap.dedent("""
        import torch

        def positional(width, sample_shape, num_outputs):
            return torch.nn.Linear(6, num_outputs)

        def not_a_module(*, sample_shape, num_outputs):
            return {}

        def raises(*, sample_shape, num_outputs):
            raise ValueError("no")
    """))
    model, want = BAD[case]
    if case == "wrong_output":  # build a 5-output model for 3 classes: a factory that ignores num_outputs
        (tmp_path / "wrong.py").write_text("from byo_example.model import build as b\n"
                                           "def build(*, sample_shape, num_outputs, **kw):\n"
                                           "    return b(sample_shape=sample_shape, num_outputs=5, **kw)\n")
        model = {"module": "wrong:build", "args": {"width": 8}}
    conf = {"run": {"dir": str(tmp_path / "run")}, "data": {"dir": str(data), "batch_size": 8}, "model": model}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(EXAMPLE)]))
    p = subprocess.run([sys.executable, "-m", "hpctrain", "train", "c.yaml", "--check"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and want in lines[0], p.stderr


def test_model_args_without_module_and_unknown_loss_are_refused():
    from hpctrain.errors import ConfigError
    from hpctrain.train.config import load_config

    with pytest.raises(ConfigError, match="model.args: only used with model.module"):
        load_config({"data": {"dir": "x"}, "model": {"args": {"width": 3}}})
    with pytest.raises(ConfigError, match="loss.module: got 'hinge'"):
        load_config({"data": {"dir": "x"}, "loss": {"module": "hinge"}})


# -- the session API -------------------------------------------------------------------------------
def loop(data, run_dir, *, epochs=2, usr2_at=None, every=4, backend="mpi"):
    """The loop of docs/examples/byo/train.py, small; USR2 to itself after step ``usr2_at``."""
    import hpctrain
    from byo_example.model import build

    with hpctrain.session(run_dir, backend=backend, seed=7, checkpoint_every=every, keep=50) as s:
        loader = s.loader(data, batch_size=16, prefetch=0)
        model = build(sample_shape=(6,), num_outputs=3, width=16, blocks=1, dropout=0.2)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
        model, opt = s.setup(model, opt, clip_grad_norm=0.5)
        state = s.resume({"model": model, "opt": opt})
        for step, (x, y) in s.steps(loader, start=state.step, epochs=epochs):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            s.log(step, loss=loss.item())
            s.checkpoint_if_due(step)
            if step == usr2_at:
                os.kill(os.getpid(), signal.SIGUSR2)
        s.checkpoint(s.step)
    return s, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_session_preempted_by_usr2_resumes_bit_for_bit(tmp_path, data):
    import json

    import hpctrain

    s_full, full = loop(data, tmp_path / "full")
    assert s_full.step == 2 * (240 // 16) and json.loads((tmp_path / "full" / "result.json").read_text())[
        "status"] == "completed"
    with pytest.raises(hpctrain.Preempted) as e:
        loop(data, tmp_path / "cut", usr2_at=10)  # mid-epoch: the loader position must come back too
    assert e.value.step == 10 and e.value.code == 3
    assert not (tmp_path / "cut" / "result.json").exists()
    s_cut, cut = loop(data, tmp_path / "cut")
    assert s_cut.resumed_from.endswith("step-00000010.pt")
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, s_full.step + 1))  # no step logged twice across the restart
    # the signal handler is gone after the session: USR2 would kill the process again, not raise a flag
    assert signal.getsignal(signal.SIGUSR2) in (signal.SIG_DFL, None)


def test_session_clips_the_gradient_norm(tmp_path, data):
    """The norm seen by the optimizer's step is at most clip_grad_norm (checked on a step)."""
    import hpctrain

    seen = []
    with hpctrain.session(tmp_path / "clip", checkpoint_every=0) as s:
        model = torch.nn.Linear(6, 3)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model, opt = s.setup(model, opt, clip_grad_norm=0.01)
        orig = opt.optimizer.step

        def spy(*a, **k):
            seen.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))))
            return orig(*a, **k)

        opt.optimizer.step = spy
        x = torch.randn(16, 6) * 100
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), torch.zeros(16, dtype=torch.int64)).backward()
        unclipped = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))
        opt.step()
    assert unclipped > 0.1 and seen and seen[0] <= 0.01 * (1 + 1e-5)


def test_session_bad_inputs(tmp_path, data):
    import hpctrain
    from hpctrain.errors import ConfigError

    with pytest.raises(ConfigError, match="give epochs=N or max_steps=N"):
        with hpctrain.session(tmp_path / "a") as s:
            next(s.steps(s.loader(data, batch_size=8)))
    with pytest.raises(ConfigError, match="'n' is a int without state_dict"):
        with hpctrain.session(tmp_path / "b") as s:
            s.resume({"n": 3})
    with pytest.raises(ConfigError, match="run_dir is missing"):
        with hpctrain.session():
            pass
    assert not np.any([(tmp_path / d / "result.json").exists() for d in ("a", "b")])


# -- precision, clipping, compile --------------------------------------------------------------------
def test_bf16_on_cpu_trains_and_resumes_bit_for_bit(tmp_path, data):
    import json

    from hpctrain.train.checkpoint import load
    from hpctrain.train.trainer import train

    c = cfg(data, tmp_path / "full", run={"precision": "bf16"})
    full = train(c)
    losses = [json.loads(r)["train_loss"] for r in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
              if json.loads(r)["kind"] == "epoch"]
    assert len(losses) == 3 and losses[-1] < losses[0] * 0.5 and full.metrics["val_accuracy"] > 0.9
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] == 12

    cut = cfg(data, tmp_path / "cut", run={"precision": "bf16"})
    assert train(cut, stop_requested=stop).status == "interrupted"
    assert train(cut).status == "completed"
    a = load(tmp_path / "full" / "checkpoints" / "final.pt")["model"]
    b = load(tmp_path / "cut" / "checkpoints" / "final.pt")["model"]
    assert all(a[k].dtype == torch.float32 and torch.equal(a[k], b[k]) for k in a)


def test_fp16_without_cuda_is_refused_with_the_reason(tmp_path, data):
    from hpctrain.errors import ConfigError
    from hpctrain.train.plan import check_runtime

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: fp16 is allowed here")
    with pytest.raises(ConfigError, match="run.precision=fp16: float16 training needs CUDA .*use run.precision=bf16"):
        check_runtime(cfg(data, tmp_path / "r", run={"precision": "fp16"}), 1)


def test_clip_grad_norm_bounds_the_norm_of_each_step(tmp_path, data, monkeypatch):
    from hpctrain.train.trainer import train

    norms = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        params = list(params)
        before = real(params, max_norm, *a, **k)
        after = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
        norms.append((float(before), after))
        return before

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)  # precision.apply_step looks it up per call
    res = train(cfg(data, tmp_path / "clip", run={"epochs": 1}, optimizer={"clip_grad_norm": 0.05}))
    assert res.status == "completed" and len(norms) == res.step
    assert any(b > 0.05 for b, _ in norms)  # clipping had something to do
    assert all(a <= 0.05 * (1 + 1e-4) for _, a in norms)


@pytest.mark.slow  # inductor compiles C++ for the model: about 30 s
def test_torch_compile_option_trains_and_keeps_plain_names(tmp_path, data):
    from hpctrain.train.checkpoint import load
    from hpctrain.train.trainer import train

    res = train(cfg(data, tmp_path / "c", run={"epochs": 1, "compile": True}))
    assert res.status == "completed" and res.metrics["val_accuracy"] > 0.6
    names = load(tmp_path / "c" / "checkpoints" / "final.pt")["model"]
    assert names and not any("_orig_mod" in k for k in names)


# -- regression --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def diabetes(tmp_path_factory):
    from hpctrain.data.sources import write_shards

    out = tmp_path_factory.mktemp("diab") / "diabetes"
    write_shards("sklearn:diabetes", out, val_fraction=0.2, task="regression", rows_per_shard=100)
    return out


def test_regression_on_diabetes_reaches_the_floor_and_predicts_floats(tmp_path, diabetes):
    """R^2 on the validation split above a stated floor (0.35; a least-squares fit on the same
    split is the oracle it is also compared with), early stopping on val_r2, float predictions."""
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score

    from hpctrain.data.shards import iter_arrays
    from hpctrain.predict import load_run, predict_shards
    from hpctrain.train.trainer import train

    c = cfg(diabetes, tmp_path / "run", run={"epochs": 40}, data={"batch_size": 32},
            model={"module": "mlp", "args": {"hidden": [32]}}, regularization={"early_stopping": True,
                                                                              "monitor": "val_r2", "patience": 8},
            checkpoint={"every_steps": 0}, logging={"plots": True})
    res = train(c)
    (xt, yt), (xv, yv) = ([np.concatenate(a) for a in zip(*[(x, y) for _, x, y in iter_arrays(diabetes, split=s)])]
                          for s in ("train", "val"))
    oracle = r2_score(yv, LinearRegression().fit(xt, yt).predict(xv))
    assert yt.dtype == np.float32 and res.metrics["val_r2"] > 0.35 and res.metrics["val_r2"] > oracle - 0.1
    assert res.metrics["val_mse"] > 0 and "confusion" not in res.metrics
    run = load_run(tmp_path / "run")
    pred = run.predict(xv)
    assert pred.dtype == np.float32 and pred.shape == yv.shape
    assert r2_score(yv, pred) == pytest.approx(res.metrics["val_r2"], abs=1e-4)
    s = predict_shards(tmp_path / "run", diabetes, tmp_path / "p.npz", split="val")
    assert s["r2"] == pytest.approx(res.metrics["val_r2"], abs=1e-4)
    assert (tmp_path / "run" / "plots" / "pred_vs_true.png").is_file()


def test_regression_with_several_targets(tmp_path):
    from hpctrain.data.sources import write_shards
    from hpctrain.train.trainer import train

    data = write_shards("synthetic:regression?rows=800&features=5&targets=3&noise=0.05", tmp_path / "r3",
                        val_fraction=0.2, task="regression").root
    res = train(cfg(data, tmp_path / "run", run={"epochs": 15}, loss={"module": "mae"}))
    assert len(res.metrics["val_r2_per_target"]) == 3 and res.metrics["val_r2"] > 0.9


def test_task_mismatch_and_classification_options_are_refused(tmp_path, data, diabetes):
    from hpctrain.errors import ConfigError
    from hpctrain.train.plan import check_runtime

    with pytest.raises(ConfigError, match="data.task: regression asked, but .* holds classification labels"):
        check_runtime(cfg(data, tmp_path / "a", data={"task": "regression"}), 1)
    with pytest.raises(ConfigError, match="imbalance.class_weights: 'balanced' is for class labels"):
        check_runtime(cfg(diabetes, tmp_path / "b", imbalance={"class_weights": "balanced"}), 1)
    with pytest.raises(ConfigError, match="loss.module: cross_entropy is a classification loss"):
        check_runtime(cfg(diabetes, tmp_path / "c", loss={"module": "cross_entropy"}), 1)
    from hpctrain.data.shards import ShardError
    from hpctrain.data.sources import write_shards

    with pytest.raises(ShardError, match="'sklearn:diabetes' is a regression dataset; pass --task regression"):
        write_shards("sklearn:diabetes", tmp_path / "x")


def test_extra_metrics_by_name_and_import_path(tmp_path, data, diabetes):
    """metrics.extra on the whole validation split: a built-in and a user's function, checked
    against numpy/sklearn on the final model's outputs; a bad one is refused at --check."""
    from sklearn.metrics import balanced_accuracy_score

    from hpctrain.data.shards import iter_arrays
    from hpctrain.errors import ConfigError
    from hpctrain.predict import load_run
    from hpctrain.train.plan import check_runtime
    from hpctrain.train.trainer import train

    (tmp_path / "mymetrics.py").write_text(textwrap.dedent("""
        from sklearn.metrics import balanced_accuracy_score

        def balanced_accuracy(outputs, targets):
            return balanced_accuracy_score(targets, outputs.argmax(1))

        def max_error(outputs, targets):
            return abs(outputs[:, 0] - targets).max()

        def broken(outputs, targets):
            raise KeyError("nope")
    """))
    sys.path.insert(0, str(tmp_path))
    try:
        res = train(cfg(data, tmp_path / "run", run={"epochs": 1},
                        metrics={"extra": ["mymetrics:balanced_accuracy", "accuracy"]}))
        x, y = (np.concatenate(a) for a in zip(*[(x, y) for _, x, y in iter_arrays(data, split="val")]))
        pred = load_run(tmp_path / "run").predict(x)
        assert res.metrics["val_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
        assert res.metrics["val_accuracy"] == pytest.approx(float((pred == y).mean()))
        reg = train(cfg(diabetes, tmp_path / "reg", run={"epochs": 2}, metrics={"extra": ["mymetrics:max_error"]}))
        xr, yr = (np.concatenate(a) for a in zip(*[(x, y) for _, x, y in iter_arrays(diabetes, split="val")]))
        want = float(np.abs(load_run(tmp_path / "reg").predict(xr) - yr).max())
        assert reg.metrics["val_max_error"] == pytest.approx(want, rel=1e-5)
        with pytest.raises(ConfigError, match="metrics.extra: 'broken' on outputs .* raised KeyError"):
            check_runtime(cfg(data, tmp_path / "b", metrics={"extra": ["mymetrics:broken"]}), 1)
        with pytest.raises(ConfigError, match=r"metrics.extra\[0\]: cannot import module 'nomod'"):
            check_runtime(cfg(data, tmp_path / "c", metrics={"extra": ["nomod:f"]}), 1)
    finally:
        sys.path.remove(str(tmp_path))


def test_loss_module_with_options_of_the_builtin_loss_is_refused():
    from hpctrain.errors import ConfigError
    from hpctrain.train.config import load_config

    with pytest.raises(ConfigError, match="loss.module: set together with regularization.label_smoothing"):
        load_config({"data": {"dir": "x"}, "loss": {"module": "cross_entropy"},
                     "regularization": {"label_smoothing": 0.1}})


def test_submit_script_records_where_the_code_is(tmp_path, monkeypatch):
    from hpctrain.cli import build_parser
    from hpctrain.commands.submit import request_from_args
    from hpctrain.errors import ConfigError
    from hpctrain.slurm.request import build_submission
    from hpctrain.slurm.script import ScriptTask

    proj = tmp_path / "my proj"
    (proj / "src").mkdir(parents=True)
    (proj / "train.py").write_text("print('hi')\n")
    monkeypatch.chdir(proj)
    monkeypatch.setenv("PYTHONPATH", "src")
    monkeypatch.setenv("HPCTRAIN_RUNS", str(tmp_path / "runs"))

    def parse(*argv):  # the CLI's parse, then its typed request
        return request_from_args(build_parser().parse_args(["submit", *argv]))

    sub = build_submission(parse("--script", "train.py", "--ntasks-per-node", "2", "--", "--data", "d x", "-v"))
    task = sub.job.task
    assert isinstance(task, ScriptTask)
    assert task.script == str(proj / "train.py") and task.args == ["--data", "d x", "-v"]
    assert task.cwd == str(proj) and task.pythonpath == [str(proj), str(proj / "src")]
    assert sub.spec.run_dir == (tmp_path / "runs" / "train").resolve()
    with pytest.raises(ConfigError, match="--script 'nope.py': no such file"):
        build_submission(parse("--script", "nope.py"))
    with pytest.raises(ConfigError, match="drop CONFIG.yaml, --counter and --set"):
        parse("--script", "train.py", "--set", "a.b=1")
    with pytest.raises(ConfigError, match=r"unexpected arguments \['b'\]; only --script"):
        parse("cfg.yaml", "b")


def test_a_regression_model_is_exported_and_served_as_floats(tmp_path, diabetes):
    """export -> artifact -> the real HTTP server: float predictions equal to the run's own."""
    pytest.importorskip("safetensors")
    pytest.importorskip("starlette")
    import json

    from serve_helpers import val_rows  # noqa: F401 - the serve tests' helpers are importable here
    from test_serve import Server, predict, request

    from hpctrain.cli import main
    from hpctrain.data.shards import iter_arrays
    from hpctrain.predict import load_run
    from hpctrain.train.trainer import train

    assert train(cfg(diabetes, tmp_path / "run", run={"epochs": 3}, model={"module": "mlp", "args": {"hidden": [8]}},
                     checkpoint={"every_steps": 0})).status == "completed"
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "model")]) == 0
    x, _ = (np.concatenate(a) for a in zip(*[(x, y) for _, x, y in iter_arrays(diabetes, split="val")]))
    want = load_run(tmp_path / "run").predict(x)
    art = load_run(tmp_path / "model")
    assert art.regression and np.array_equal(art.predict(x), want)
    s = Server(tmp_path / "model")
    try:
        status, body = predict(s.port, x[:5].tolist())
        assert status == 200, body
        assert body["predictions"] == pytest.approx(want[:5].tolist(), rel=1e-6)
        assert all(isinstance(v, float) for v in body["predictions"])
        status, meta = request(s.port, "GET", "/metadata")
        assert status == 200 and meta["task"] == "regression" and meta["targets"] == 1
    finally:
        assert s.stop() == 0
    assert json.loads((tmp_path / "model" / "artifact.json").read_text())["targets"] == 1
