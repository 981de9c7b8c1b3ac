"""Batch augmentation: the operations (:mod:`hpctrain.kernels.augment_ops`) and
:func:`build_pipeline`, which composes them (:mod:`hpctrain.kernels.pipeline`).

This module only re-exports; the pipeline imports the operations from ``augment_ops``, so
no import cycle runs through here.
"""

from __future__ import annotations

from hpctrain.kernels.augment_ops import (
    AugmentError, Crop, CropConfig, Cutout, CutoutConfig, Flip, FlipConfig, Jitter, JitterConfig, Mixup,
    MixupConfig, Noise, NoiseConfig, OPS, Op, SaltPepper, SaltPepperConfig, Smote, SmoteConfig, TabularNoise,
    TabularNoiseConfig, class_ids, soft_labels,
)
from hpctrain.kernels.pipeline import build_pipeline

__all__ = [
    "AugmentError", "Crop", "CropConfig", "Cutout", "CutoutConfig", "Flip", "FlipConfig", "Jitter",
    "JitterConfig", "Mixup", "MixupConfig", "Noise", "NoiseConfig", "OPS", "Op", "SaltPepper",
    "SaltPepperConfig", "Smote", "SmoteConfig", "TabularNoise", "TabularNoiseConfig", "class_ids",
    "soft_labels", "build_pipeline",
]
