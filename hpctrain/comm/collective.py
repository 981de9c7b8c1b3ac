"""The one collective interface: what every multi-rank part of hpctrain uses to talk.

Four operations and their conveniences, on numpy arrays and picklable objects:

* ``allreduce(a, op)``: elementwise sum/max/min of a small array over the ranks;
* ``gather(obj, root)`` / ``allgather(obj)``: every rank's object on the root / everywhere;
* ``broadcast(obj, root)``: the root's object everywhere;
* ``abort(code)``: end every rank of the job (:func:`hpctrain.comm.failfast.abort`).

Training gets an implementation from its gradient-exchange backend (:class:`Comm` extends
this class); quality, imputation and the farm use :func:`hpctrain.comm.world.world`, which
is the ``mpi`` backend's control plane over COMM_WORLD when a launcher started several ranks
and :class:`LocalCollective` otherwise. Code written against this class runs unchanged on one
rank or many and is unit-tested without MPI.
"""

from __future__ import annotations

import abc
from typing import Any, NoReturn

import numpy as np


class Collective(abc.ABC):
    rank: int = 0
    size: int = 1

    @abc.abstractmethod
    def allreduce(self, a: np.ndarray, op: str = "sum") -> np.ndarray:
        """Elementwise reduction (op: sum, max, min) of a numeric array; returns a new array."""

    @abc.abstractmethod
    def broadcast(self, obj: Any, root: int = 0) -> Any: ...

    @abc.abstractmethod
    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        """The list of every rank's ``obj`` on ``root``, None elsewhere."""

    def allgather(self, obj: Any) -> list[Any]:
        return self.broadcast(self.gather(obj))

    def barrier(self) -> None:
        self.allreduce(np.zeros(1))

    def any_true(self, flag: bool) -> bool:
        return bool(self.allreduce(np.array([1.0 if flag else 0.0]), "max")[0] > 0)

    def abort(self, code: int = 1) -> NoReturn:
        """End this rank and every other one (never returns)."""
        from hpctrain.comm.failfast import abort

        abort(code)


class LocalCollective(Collective):
    """One rank: every collective is the identity."""

    rank = 0
    size = 1

    def allreduce(self, a: np.ndarray, op: str = "sum") -> np.ndarray:
        return np.array(a, copy=True)

    def broadcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        return [obj]

    def barrier(self) -> None:
        pass
