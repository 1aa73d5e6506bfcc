"""What must work without importing Ray, each checked in a fresh interpreter (this one has imported
Ray already): the sweep module, whose definition, rows and tables jobs/tune.py uses before any
sweep runs (cluster/tune.py, the Tune glue, is the one that imports Ray)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT


def modules_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter has imported after running `code` (in the repository)."""
    done = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {name.partition(".")[0] for name in done.stdout.split()}


@pytest.mark.parametrize("module", ["cluster.sweep"])
def test_imports_without_ray(module):
    assert "ray" not in modules_after(f"import {module}")


def test_the_tune_glue_does_import_ray():
    """The check above can fail: the module that runs sweeps on Tune imports Ray."""
    assert "ray" in modules_after("import cluster.tune")
