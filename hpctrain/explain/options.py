"""The typed request of ``hpctrain explain`` and the checks on it (pure: no files are read)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hpctrain.explain import ExplainError

# every method; 'attention' only applies to models that record their attention weights
METHODS = ("ig", "saliency", "occlusion", "permutation", "attention")
ATTRIBUTIONS = ("ig", "saliency", "occlusion")
BASELINES = ("mean", "zero")


def parse_methods(spec: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``"ig,saliency"`` (or a list, or repeated flags) as a tuple in METHODS order; None or
    ``"all"``: every method that applies to the model (decided once the model is loaded)."""
    if spec is None:
        return None
    parts = [spec] if isinstance(spec, str) else list(spec)
    names = [p.strip() for part in parts for p in str(part).split(",") if p.strip()]
    if not names or names == ["all"]:
        return None
    bad = [n for n in names if n not in METHODS]
    if bad:
        raise ExplainError(f"--method: unknown method(s) {bad}; expected any of {', '.join(METHODS)} (comma-separated)"
                           " or all")
    return tuple(m for m in METHODS if m in names)


@dataclass(kw_only=True, slots=True)
class ExplainOptions:
    run: Path = field(metadata={"help": "run directory of a completed 'hpctrain train' run, or a model artifact"})
    out: Path = field(metadata={"help": "output directory (explain.json, PNGs, explain.html)"})
    shards: Path | None = field(default=None, metadata={
        "help": "shard directory to explain", "default_text": "the run's data.dir"})
    split: str = field(default="val", metadata={"help": "split whose rows are explained: train or val"})
    samples: int = field(default=16, metadata={
        "help": "rows explained one by one (IG, saliency, occlusion, attention)"})
    methods: tuple[str, ...] | None = field(default=None, metadata={
        "help": "methods to run (None: all that apply to the model)"})
    baseline: str = field(default="mean", metadata={
        "help": "IG and occlusion baseline: mean (the training split's feature means, from the manifest's "
                "statistics) or zero"})
    steps: int = field(default=64, metadata={"help": "integrated-gradients steps (more: smaller completeness error)"})
    repeats: int = field(default=5, metadata={"help": "permutation-importance shuffles per feature"})
    window: int | None = field(default=None, metadata={
        "help": "occlusion window: features (tables) or pixels per side (images)",
        "default_text": "1 for tables, max(1, min(H, W) // 8) for images"})
    seed: int = field(default=0, metadata={"help": "seed of the sample choice and the permutations"})

    def __post_init__(self):
        self.run, self.out = Path(self.run), Path(self.out)
        if self.shards is not None:
            self.shards = Path(self.shards)
        if self.split not in ("train", "val"):
            raise ExplainError(f"--split: got {self.split!r}, expected train or val")
        for name, v, lo in (("--samples", self.samples, 1), ("--steps", self.steps, 2), ("--repeats", self.repeats, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ExplainError(f"{name}: got {v!r}, expected an integer >= {lo}")
        if self.window is not None and (isinstance(self.window, bool) or not isinstance(self.window, int)
                                        or self.window < 1):
            raise ExplainError(f"--window: got {self.window!r}, expected an integer >= 1")
        if self.baseline not in BASELINES:
            raise ExplainError(f"--baseline: got {self.baseline!r}, expected mean or zero")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ExplainError(f"--seed: got {self.seed!r}, expected an integer in [0, 2**32)")
        if self.methods is not None:
            self.methods = parse_methods(list(self.methods))
        run, out = self.run.resolve(), self.out.resolve()
        if out == run or run in out.parents:
            raise ExplainError(f"--out {str(self.out)!r} is inside the run {str(self.run)!r}; explain never writes "
                               "into its input: choose a directory outside it")
