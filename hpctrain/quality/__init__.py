"""Data quality: profiling, outliers, drift, cleaning and balancing of shard sets.

The statistics modules (``stats``, ``outliers``, ``drift``, ``balance``, ``clean``) work on
numpy arrays and know nothing about files; ``io`` and the command modules connect them to
shard directories. Importing this package stays cheap: nothing heavy is imported here.
"""

from hpctrain.errors import HpctrainError


class QualityError(HpctrainError):
    """Bad input to a data-quality command: schema mismatch, empty data, wrong dtype."""
