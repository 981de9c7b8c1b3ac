"""setup.cfg lists packages by hand (kernels/ is mapped into hpctrain.kernels); a package
directory missing from that list would be absent from a wheel, so check the list."""

import configparser
import importlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_dir_is_listed_and_importable():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = {p.strip() for p in cfg["options"]["packages"].split() if p.strip()}
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "hpctrain").rglob("__init__.py")}
    on_disk.add("hpctrain.kernels")
    missing = on_disk - listed
    assert not missing, f"add {sorted(missing)} to [options] packages in setup.cfg"
    for name in listed:
        assert importlib.import_module(name).__file__
    assert importlib.import_module("hpctrain.kernels").__file__.startswith(str(REPO / "kernels"))


def test_pyproject_holds_only_build_system():
    text = (REPO / "pyproject.toml").read_text()
    sections = [line for line in text.splitlines() if line.startswith("[")]
    assert sections == ["[build-system]"]
