"""Data quality: profiling, outliers, drift, cleaning and balancing of shard sets.

The statistics modules (``stats``, ``outliers``, ``drift``, ``balance``, ``clean``) work on
numpy arrays and know nothing about files; ``io`` and the command modules connect them to
shard directories. Importing this package stays cheap: nothing heavy is imported here.
"""

from hpctrain.errors import HpctrainError


class QualityError(HpctrainError):
    """Bad input to a data-quality command: schema mismatch, empty data, wrong dtype."""


def check_seed(seed, what: str = "--seed") -> int:
    """``seed`` if it is an integer in [0, 2**32), the range scikit-learn's random_state takes
    (the forest in profile) and the one ``hpctrain shard`` accepts; else a QualityError."""
    import numbers

    from hpctrain.data.sources import SEED_LIMIT

    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < SEED_LIMIT:
        raise QualityError(f"{what} {seed!r}: expected an integer from 0 to {SEED_LIMIT - 1} (2**32 - 1), the range "
                           "scikit-learn and numpy accept as a seed")
    return int(seed)
