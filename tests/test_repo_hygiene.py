"""Whole-repository checks that no other test would catch: a merge left half done, or a shell
script that does not parse (the demo is not run by the suite; a syntax error at its end once
passed every test)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [REPO / f for f in out.stdout.splitlines() if (REPO / f).is_file()]


def test_no_merge_conflict_markers():
    found = []
    for f in _tracked():
        try:
            lines = f.read_text(encoding="utf-8").splitlines()
        except (UnicodeDecodeError, OSError):
            continue
        found += [f"{f.relative_to(REPO)}:{i + 1}" for i, line in enumerate(lines)
                  if line.startswith(("<<<<<<< ", ">>>>>>> ")) or line == "<<<<<<<"]
    assert not found, "merge conflict markers left in: " + ", ".join(found)


def test_every_shell_script_parses():
    scripts = [f for f in _tracked() if f.suffix == ".sh" or f.relative_to(REPO).as_posix() == ".ci/run"]
    assert any(f.name == "demo.sh" for f in scripts), scripts
    bad = []
    for f in scripts:
        p = subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True, timeout=60)
        if p.returncode:
            bad.append(f"{f.relative_to(REPO)}: {p.stderr.strip()}")
    assert not bad, "\n".join(bad)
