"""The exception hierarchy. Every error a user can cause derives from HpctrainError,
so the CLI can print it as one clear line instead of a traceback."""


class HpctrainError(Exception):
    """Base of every error hpctrain raises on purpose."""


class ConfigError(HpctrainError):
    """A configuration value or key is wrong."""


class LaunchError(HpctrainError):
    """A process could not be launched, or a launcher is missing."""


class ClusterError(HpctrainError):
    """Slurm is missing, unreachable or refused a request."""


class ImputeError(HpctrainError):
    """Imputer input, configuration or statistics file is wrong (``hpctrain.kernels.impute``
    re-exports it; it lives here so the file readers in ``hpctrain.data`` raise it too)."""
