"""Explanations of a trained model (``hpctrain explain``): integrated gradients, saliency and
occlusion through Captum, permutation importance on a split, and the attention maps of the
attention model kind; written as explain.json, PNGs and a self-contained explain.html.

Modules, one job each: ``options`` (the typed request), ``inputs`` (rows, baseline, the split
of work over ranks), ``attribute`` (Captum and the attention weights), ``permutation``
(metric drops), ``plots`` (matplotlib), ``page`` (the HTML), ``run`` (the collective driver).
Nothing heavy is imported here.
"""

from hpctrain.errors import HpctrainError


class ExplainError(HpctrainError):
    """Bad input to ``hpctrain explain``: a run, a method, a split or a sample count that cannot be used."""
