"""Gradient exchange under 2 ranks: each backend equals the single-process oracle.

Run by scripts/test.sh as ``mpirun -np 2 python -m pytest --with-mpi -m mpi``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.mpi

K_STEPS = 5
LOCAL_B = 8


def _model(torch, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 3))


def _data(torch):
    g = torch.Generator().manual_seed(123)
    x = torch.randn(K_STEPS, 2 * LOCAL_B, 6, generator=g, dtype=torch.float64).float()
    y = torch.randint(0, 3, (K_STEPS, 2 * LOCAL_B), generator=g)
    return x, y


def _oracle(torch, opt_name):
    model = _model(torch, seed=7)  # rank 0's model, which the broadcast gives every rank
    opt = _opt(torch, opt_name, model)
    x, y = _data(torch)
    for k in range(K_STEPS):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[k]), y[k]).backward()
        opt.step()
    return model


def _opt(torch, name, model):
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    return torch.optim.AdamW(model.parameters(), lr=0.01)


@pytest.fixture(scope="module")
def torch():
    import torch

    torch.set_num_threads(1)
    return torch


def _comm(name):
    from hpctrain.comm import shared_comm  # one process group per backend for the whole session

    return shared_comm(name, timeout_s=60)


# A tiny bucket_mb cuts one bucket per tensor, so several allreduces overlap with backward.
@pytest.mark.parametrize("backend,bucket_mb", [("mpi", 4.0), ("mpi", 0.0005), ("torch", 4.0), ("torch", 0.0005),
                                               ("horovod", 4.0)])
@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
@pytest.mark.parametrize("via_exchange", [False, True], ids=["loss.backward", "exchange.backward"])
def test_two_ranks_equal_one_rank_double_batch(torch, backend, opt_name, bucket_mb, via_exchange):
    comm = _comm(backend)
    assert comm.size == 2
    model = _model(torch, seed=comm.rank + 7)  # different on purpose: the broadcast must fix it
    opt = _opt(torch, opt_name, model)
    ex = comm.gradient_exchange(model, opt, bucket_mb=bucket_mb)
    comm.broadcast_model(model, ex.optimizer)
    x, y = _data(torch)
    r = comm.rank
    for k in range(K_STEPS):
        ex.zero_grad()
        xs, ys = x[k, r * LOCAL_B:(r + 1) * LOCAL_B], y[k, r * LOCAL_B:(r + 1) * LOCAL_B]
        loss = torch.nn.functional.cross_entropy(model(xs), ys)
        # exchange.backward is the trainer's path: the averaging is folded into the loss
        ex.backward(loss) if via_exchange else loss.backward()
        ex.step()
    ex.close()
    want = _oracle(torch, opt_name)
    for (n, p), q in zip(model.named_parameters(), want.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), atol=1e-5, rtol=0, err_msg=n)


@pytest.mark.parametrize("backend", ["mpi", "horovod", "torch"])
@pytest.mark.parametrize("via_exchange", [False, True], ids=["loss.backward", "exchange.backward"])
def test_gradient_accumulation_equals_big_batch(torch, backend, via_exchange):
    """2 ranks x 2 backward passes of b/2 = one step on 2b samples."""
    comm = _comm(backend)
    model = _model(torch, seed=3)
    opt = _opt(torch, "sgd", model)
    ex = comm.gradient_exchange(model, opt, backward_passes_per_step=2)
    x, y = _data(torch)
    r, h = comm.rank, LOCAL_B // 2
    for k in range(K_STEPS):
        ex.zero_grad()
        for j in range(2):
            lo = r * LOCAL_B + j * h
            loss = torch.nn.functional.cross_entropy(model(x[k, lo:lo + h]), y[k, lo:lo + h]) / 2
            ex.backward(loss) if via_exchange else loss.backward()
        ex.step()
    ex.close()
    want = _model(torch, seed=3)
    o = _opt(torch, "sgd", want)
    for k in range(K_STEPS):
        o.zero_grad()
        torch.nn.functional.cross_entropy(want(x[k]), y[k]).backward()
        o.step()
    for p, q in zip(model.parameters(), want.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["mpi", "horovod", "torch"])
def test_control_plane(torch, backend):
    comm = _comm(backend)
    s = comm.allreduce(np.array([comm.rank + 1.0, 2.0]))
    np.testing.assert_array_equal(s, [3.0, 4.0])
    assert comm.any_true(comm.rank == 1) is True
    assert comm.any_true(False) is False
    assert comm.broadcast({"a": comm.rank}) == {"a": 0}
    g = comm.gather(comm.rank * 10)
    assert g == ([0, 10] if comm.rank == 0 else None)


@pytest.mark.parametrize("backend", ["torch", "horovod"])
def test_fp16_compression_close(torch, backend):
    comm = _comm(backend)
    t = torch.arange(1000, dtype=torch.float32) / 7 + comm.rank
    model = torch.nn.Linear(1000, 1, bias=False)
    ex = comm.gradient_exchange(model, torch.optim.SGD(model.parameters(), lr=0.0), compression=True)
    ex.zero_grad()
    model(t.view(1, -1)).sum().backward()  # d/dw (w . t) = t: each rank's gradient is its own t
    ex.step()
    want = (torch.arange(1000, dtype=torch.float32) / 7 + 0.5).numpy()
    np.testing.assert_allclose(model.weight.grad.view(-1).numpy(), want, rtol=2e-3)
