"""The fail-fast excepthook reports an error once, Ctrl-C included."""

import subprocess
import sys

import pytest

SCRIPT = """
from hpctrain.comm.failfast import install_excepthook
install_excepthook(3)
raise {exc}("boom")
"""


@pytest.mark.parametrize("exc", ["KeyboardInterrupt", "RuntimeError"])
def test_unhandled_error_is_reported_once_then_aborts(exc):
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(exc=exc)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.count("Traceback (most recent call last)") == 1, out.stderr
    assert out.stderr.count(f"{exc}: boom") == 1, out.stderr
    assert "[rank 3] hpctrain: aborting all ranks after an error on this rank" in out.stderr
