"""What must work without importing Ray, each checked in a fresh interpreter (this one has imported
Ray already): the sweep module and the search space, whose definitions, rows and tables jobs/tune.py
uses before any sweep runs, and a whole `jobs/tune.py --dry-run` (cluster/tune.py, the Tune glue,
is the one that imports Ray, when a sweep runs)."""
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


@pytest.mark.parametrize("module", ["cluster.sweep", "cluster.search_space"])
def test_imports_without_ray(module):
    assert "ray" not in modules_after(f"import {module}")


def test_a_dry_run_sweep_is_checked_without_ray(tmp_path):
    """Every check of a grid sweep (its space, settings and folder) before anything runs."""
    words = ["--config", "tiny", "--storage", str(tmp_path), "beta=0,1", "N=3,6", "--dry-run"]
    assert "ray" not in modules_after(f"from jobs.tune import main\nassert main({words!r}) == 0")


def test_the_tune_glue_does_import_ray():
    """The checks above can fail: the module that runs sweeps on Tune imports Ray."""
    assert "ray" in modules_after("import cluster.tune")
