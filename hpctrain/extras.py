"""Optional dependencies and the pip extra that installs each.

A plain ``pip install hpctrain`` gives training, submission, sharding, imputation, the farm
and prediction. The rest needs an extra (setup.cfg's [options.extras_require]); a feature
whose extra is missing fails with one line that names it, not a ModuleNotFoundError.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from hpctrain.errors import HpctrainError

# top-level module -> (pip distribution, extra); setup.cfg lists the same groups
MODULES: dict[str, tuple[str, str]] = {
    "sklearn": ("scikit-learn", "quality"),
    "scipy": ("scipy", "quality"),
    "optuna": ("optuna", "sweep"),
    "pyarrow": ("pyarrow", "parquet"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "safetensors": ("safetensors", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "starlette": ("starlette", "serve"),
    "prometheus_client": ("prometheus-client", "serve"),
    "captum": ("captum", "explain"),
    "cryptography": ("cryptography", "secure"),
}


class MissingExtra(HpctrainError):
    """An optional dependency of the requested feature is not installed."""


def require(module: str, feature: str) -> ModuleType:
    """``importlib.import_module(module)``, or MissingExtra naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        dist, extra = MODULES[top]
        missing = (e.name or top).split(".")[0]
        if missing != top:  # the package is there but one of its own dependencies is not
            raise MissingExtra(f"{feature} needs {dist}, which is installed but cannot import {e.name!r}; "
                               f"reinstall it: pip install --force-reinstall 'hpctrain[{extra}]'") from None
        raise MissingExtra(f"{feature} needs {dist}, which is not installed: pip install 'hpctrain[{extra}]' "
                           "(or 'hpctrain[all]')") from None
