"""Every training-config snippet in README.md and docs/*.md (and the example configs) is
checked against the real loader, so the docs cannot drift from the config keys again
(issue 18: the docs said `augment:`, a key `hpctrain train --check` rejects)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from hpctrain.train.config import SECTIONS, load_config

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```ya?ml\n(.*?)^```", re.MULTILINE | re.DOTALL)
# a section named inline as a key of the training config: `name:` section / `name:` in the training config
INLINE = re.compile(r"`([A-Za-z_]+):`(?: section|[^|\n]{0,40} in the training config)")
NOT_TRAINING = "# not a training config"


def snippets() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            line = text[:m.start()].count("\n") + 1
            if not m.group(1).lstrip().startswith(NOT_TRAINING):
                out.append((f"{doc.relative_to(REPO)}:{line}", m.group(1)))
    return out


def _check(data, where: str, tmp_path: Path) -> None:
    assert isinstance(data, dict), f"{where}: a config snippet must be a mapping, got {type(data).__name__}"
    unknown = sorted(set(data) - set(SECTIONS))
    assert not unknown, f"{where}: {unknown} are not sections of the training config ({', '.join(SECTIONS)})"
    base = {"run": {"name": "snippet", "dir": str(tmp_path / "run")}, "data": {"dir": str(tmp_path / "data")}}
    for key, value in data.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    cfg = load_config(base)
    if cfg.augmentation.ops:
        from hpctrain.kernels.pipeline import build_pipeline

        build_pipeline(cfg.augmentation.ops, 0)  # op names and their keys, as check_runtime does


@pytest.mark.parametrize("where,text", snippets(), ids=[w for w, _ in snippets()])
def test_yaml_snippet_loads_as_a_training_config(where, text, tmp_path):
    _check(yaml.safe_load(text), where, tmp_path)


def test_the_docs_have_snippets_to_check():
    assert snippets(), "no ```yaml block found: the fence pattern is broken"


@pytest.mark.parametrize("path", sorted((REPO / "docs" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_load(path):
    load_config(path)


def test_sections_named_inline_exist():
    seen = []
    for doc in DOCS:
        for m in INLINE.finditer(doc.read_text(encoding="utf-8")):
            seen.append((doc.name, m.group(1)))
    assert seen, "no inline section reference found: the pattern is broken"
    bad = [f"{doc}: `{name}:`" for doc, name in seen if name not in SECTIONS]
    assert not bad, f"not sections of the training config ({', '.join(SECTIONS)}): {bad}"
