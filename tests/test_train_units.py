"""Pure parts of the trainer against oracles: metrics and class weights vs scikit-learn,
focal loss vs its formula, LR rules, early stopping, the models' shapes and attention."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


def test_metrics_match_sklearn():
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score

    from hpctrain.train.metrics import confusion, report

    rng = np.random.default_rng(0)
    for trial in range(20):
        k = int(rng.integers(2, 7))
        y = rng.integers(0, k, 50)
        p = np.where(rng.random(50) < 0.6, y, rng.integers(0, k, 50))
        if trial % 3 == 0:
            p[p == k - 1] = 0  # a class never predicted
        if trial % 4 == 0:
            y[y == 1] = 0  # a class absent from the truth
        cm = confusion(y, p, k)
        np.testing.assert_array_equal(cm, confusion_matrix(y, p, labels=list(range(k))))
        r = report(cm)
        assert r["accuracy"] == pytest.approx(accuracy_score(y, p))
        assert r["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
        np.testing.assert_allclose(r["per_class_recall"],
                                   recall_score(y, p, average=None, labels=list(range(k)), zero_division=0))
        np.testing.assert_allclose(r["per_class_precision"],
                                   precision_score(y, p, average=None, labels=list(range(k)), zero_division=0))
        np.testing.assert_allclose(r["per_class_f1"], f1_score(y, p, average=None, labels=list(range(k)),
                                                               zero_division=0))


def test_balanced_weights_match_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    from hpctrain.train.losses import balanced_weights, inverse_frequency

    counts = {0: 500, 1: 50, 2: 5}
    y = np.repeat([0, 1, 2], [500, 50, 5])
    want = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=y)
    np.testing.assert_allclose(balanced_weights(counts, 3).numpy(), want, rtol=1e-6)
    w = inverse_frequency(counts, 3).numpy()
    assert w[0] * 500 == pytest.approx(w[2] * 5, rel=1e-6)  # every class carries the same total weight
    assert (w * np.array([500, 50, 5])).sum() / 555 == pytest.approx(1.0, rel=1e-6)


def test_focal_loss():
    import torch.nn.functional as F

    from hpctrain.train.losses import Criterion, focal_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 5, generator=g)
    y = torch.randint(0, 5, (32,), generator=g)
    w = torch.rand(5, generator=g) + 0.5
    # gamma = 0 is (weighted) cross-entropy
    assert torch.allclose(focal_loss(logits, y, gamma=0.0), F.cross_entropy(logits, y))
    assert torch.allclose(focal_loss(logits, y, gamma=0.0, weight=w), F.cross_entropy(logits, y, weight=w))
    p = torch.softmax(logits.double(), 1)[torch.arange(32), y]
    want = (-(1 - p) ** 2 * torch.log(p)).mean()
    assert torch.allclose(focal_loss(logits.double(), y, gamma=2.0), want)
    assert focal_loss(logits, y, gamma=2.0) < F.cross_entropy(logits, y)
    assert torch.allclose(Criterion("focal", gamma=0.0)(logits, y), F.cross_entropy(logits, y))


def test_lr_rules():
    from hpctrain.train.config import ScheduleConfig
    from hpctrain.train.schedules import Plateau, lr_at, scaled_lr, warmup_factor

    assert scaled_lr(0.1, 4, True) == pytest.approx(0.4) and scaled_lr(0.1, 4, False) == 0.1
    assert warmup_factor(0, 10, 4) == pytest.approx(0.25) and warmup_factor(10, 10, 4) == 1.0
    assert warmup_factor(5, 10, 4) == pytest.approx(0.625)
    s = ScheduleConfig(kind="step", step_epochs=2, gamma=0.5)
    assert [lr_at(s, peak=1.0, step=0, epoch=e, total_steps=100, world_size=1) for e in range(5)] == \
        [1.0, 1.0, 0.5, 0.5, 0.25]
    s = ScheduleConfig(kind="exponential", gamma=0.9)
    assert lr_at(s, peak=2.0, step=0, epoch=3, total_steps=1, world_size=1) == pytest.approx(2.0 * 0.9 ** 3)
    s = ScheduleConfig(kind="cosine", min_lr=0.1)
    assert lr_at(s, peak=1.0, step=0, epoch=0, total_steps=100, world_size=1) == pytest.approx(1.0)
    assert lr_at(s, peak=1.0, step=50, epoch=0, total_steps=100, world_size=1) == pytest.approx(0.55)
    assert lr_at(s, peak=1.0, step=100, epoch=0, total_steps=100, world_size=1) == pytest.approx(0.1)
    s = ScheduleConfig(kind="constant", warmup_steps=4)
    assert lr_at(s, peak=0.8, step=0, epoch=0, total_steps=9, world_size=4) == pytest.approx(0.2)
    pl = Plateau("max", patience=1, gamma=0.5)
    for v in (0.5, 0.6, 0.6, 0.6, 0.6, 0.6):
        pl.update(v)
    assert pl.factor == 0.25  # two decays: after the 2nd and the 4th epoch without improvement
    s = ScheduleConfig(kind="plateau", min_lr=0.3)
    assert lr_at(s, peak=1.0, step=0, epoch=0, total_steps=1, world_size=1, plateau=pl) == 0.3


def test_early_stopping_unit():
    from hpctrain.train.callbacks import EarlyStopping

    m = torch.nn.Linear(2, 1)
    es = EarlyStopping("val_loss", patience=2, min_delta=0.01)
    assert es.update(1.0, 0, m) is False
    with torch.no_grad():
        m.weight.add_(1.0)
    assert es.update(0.995, 1, m) is False  # within min_delta: not better
    assert es.update(0.999, 2, m) is True
    assert es.best_epoch == 0
    es.restore(m)
    assert torch.equal(m.weight, es.best_state["weight"])


@pytest.mark.parametrize("kind,shape", [("mlp", (13,)), ("cnn", (1, 8, 8)), ("cnn", (3, 5, 7)), ("attention", (6,))])
def test_models_shapes(kind, shape):
    from hpctrain.train.models import build_model

    torch.manual_seed(0)
    m = build_model(kind, shape, 4, hidden=[8], channels=[4, 8], embed_dim=8, heads=2, layers=2)
    out = m(torch.randn(5, *shape))
    assert out.shape == (5, 4)
    assert {n.split(".")[0] for n, _ in m.named_parameters()} & {"head"}


def test_attention_weights_exposed():
    from hpctrain.train.models import AttentionClassifier

    torch.manual_seed(0)
    m = AttentionClassifier(6, 3, embed_dim=8, heads=2, layers=2)
    x = torch.randn(4, 6)
    m(x)
    assert len(m.last_attention) == 2 and m.last_attention[0].shape == (4, 2, 7, 7)
    torch.testing.assert_close(m.last_attention[-1].sum(-1), torch.ones(4, 2, 7))
    fa = m.feature_attention(x)
    assert fa.shape == (4, 6) and bool((fa >= 0).all()) and bool((fa.sum(1) <= 1.0 + 1e-6).all())


def test_cnn_rejects_flat_samples():
    from hpctrain.errors import ConfigError
    from hpctrain.train.models import build_model

    with pytest.raises(ConfigError, match="model.kind=cnn"):
        build_model("cnn", (13,), 3)
    with pytest.raises(ConfigError, match="at least 2"):
        build_model("mlp", (13,), 1)


def test_load_transfer_replaces_head_only():
    from hpctrain.errors import ConfigError
    from hpctrain.train.models import build_model, load_transfer

    torch.manual_seed(0)
    src = build_model("mlp", (6,), 3, hidden=[8])
    dst = build_model("mlp", (6,), 5, hidden=[8])
    fresh = load_transfer(dst, src.state_dict())
    assert sorted(fresh) == ["head.bias", "head.weight"]
    assert torch.equal(dst.features[1].weight, src.features[1].weight)
    with pytest.raises(ConfigError, match="architecture"):
        load_transfer(build_model("mlp", (6,), 3, hidden=[9]), src.state_dict())


def test_first_host_and_port():
    from hpctrain.comm.torch_dist import first_host, slurm_port

    assert first_host("n[03-05,9],m1") == "n03"
    assert first_host("node7") == "node7"
    assert first_host("gpu-a[10-11]-ib") == "gpu-a10-ib"
    assert 20000 <= slurm_port("123456") < 40000 and slurm_port("123456") == slurm_port("123456")


def test_array_tasks_on_one_node_get_distinct_rendezvous_ports():
    from hpctrain.comm.torch_dist import rendezvous
    from hpctrain.env import rank_info

    urls = set()
    for task, job in ((0, "501"), (1, "502")):  # one array (500), two tasks with their own job ids
        env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": job, "SLURM_ARRAY_JOB_ID": "500",
               "SLURM_ARRAY_TASK_ID": str(task), "SLURM_JOB_NODELIST": "n1", "SLURMD_NODENAME": "n1"}
        urls.add(rendezvous(rank_info(env), env))
    assert len(urls) == 2


def test_horovod_env_orders_check_before_shutdown():
    from hpctrain.comm.horovod import horovod_env

    env = horovod_env(60)
    assert int(env["HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"]) > int(env["HOROVOD_STALL_CHECK_TIME_SECONDS"])
    assert int(env["HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"]) <= 60
    assert not math.isnan(float(env["HOROVOD_STALL_CHECK_TIME_SECONDS"]))


def test_horovod_knobs_become_variables_from_the_config():
    from hpctrain.comm.horovod_knobs import horovod_env
    from hpctrain.train.build import horovod_knobs
    from hpctrain.train.config import load_config

    cfg = load_config({"data": {"dir": "d"}, "comm": {"horovod_cycle_time_ms": 0.5, "horovod_fusion_mb": 0,
                                                      "horovod_cache_capacity": 0, "horovod_poll_us": 20}})
    env = horovod_env(60, horovod_knobs(cfg, is_root=False))
    assert env["HOROVOD_CYCLE_TIME"] == "0.5"
    assert env["HOROVOD_FUSION_THRESHOLD"] == "0"
    assert env["HOROVOD_CACHE_CAPACITY"] == "0"
    assert "HOROVOD_AUTOTUNE" not in env


def test_horovod_autotune_leaves_its_parameters_free_and_logs_in_the_run_dir(tmp_path):
    from hpctrain.comm.horovod_knobs import horovod_env
    from hpctrain.rundir import RunDir
    from hpctrain.train.build import horovod_knobs
    from hpctrain.train.config import load_config

    cfg = load_config({"data": {"dir": "d"}, "run": {"dir": str(tmp_path / "r")}, "comm": {"horovod_autotune": True}})
    env = horovod_env(60, horovod_knobs(cfg, is_root=True))
    # a variable set here would pin the parameter: Horovod's autotuner skips what the environment fixed
    assert env["HOROVOD_AUTOTUNE"] == "1"
    assert not {"HOROVOD_CYCLE_TIME", "HOROVOD_FUSION_THRESHOLD", "HOROVOD_CACHE_CAPACITY"} & set(env)
    assert env["HOROVOD_AUTOTUNE_LOG"] == str(RunDir(tmp_path / "r").horovod_autotune)
    assert RunDir(tmp_path / "r").horovod_autotune.parent.is_dir()  # rank 0 made it before hvd.init


@pytest.mark.parametrize("key,value", [("horovod_cycle_time_ms", 0), ("horovod_fusion_mb", -1),
                                       ("horovod_cache_capacity", -5), ("horovod_poll_us", float("nan"))])
def test_horovod_knob_out_of_range_is_named(key, value):
    from hpctrain.errors import ConfigError
    from hpctrain.train.config import load_config

    with pytest.raises(ConfigError, match=f"comm.{key}: got"):
        load_config({"data": {"dir": "d"}, "comm": {key: value}})


def test_placement_line_groups_ranks_by_node():
    from hpctrain.train.trainer import placement_line

    assert placement_line([{"node": "a"}]) == "1 rank on 1 node: a (rank 0)"
    assert placement_line([{"node": "n1"}, {"node": "n1"}, {"node": "n2"}, {"node": "n2"}]) == \
        "4 ranks on 2 nodes: n1 (ranks 0-1), n2 (ranks 2-3)"
    assert placement_line([{"node": "n1"}, {"node": "n2"}, {"node": "n1"}]) == \
        "3 ranks on 2 nodes: n1 (ranks 0,2), n2 (rank 1)"
    assert placement_line([{"node": "n1", "device": "cpu"}, {"node": "n1", "device": "cpu"}]) == \
        "2 ranks on 1 node: n1 (ranks 0-1)"
    assert placement_line([{"node": "n1", "device": "cuda:0"}, {"node": "n1", "device": "cuda:0"}]) == \
        "2 ranks on 1 node: n1 (ranks 0-1 on cuda:0,cuda:0)"
