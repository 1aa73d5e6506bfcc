"""Every place that installs torch asks for >= 2.6: before it, torch.load(weights_only=True), which
guards every artifact and checkpoint this project reads, can be made to run code (CVE-2025-32434)."""
import re
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
# A requirement such as torch>=2.6,<2.15 or torch==2.13.0, quoted or not; not torch.load or $(CPU_TORCH).
TORCH_SPEC = re.compile(r"\btorch((?:[<>=!~]=|[<>])[\w.*+,<>=!~]*)")
BELOW_FLOOR = ("1.13.1", "2.0.0", "2.4.0", "2.5.1", "2.6.0rc1")


@pytest.mark.parametrize("name", ["pyproject.toml", "Makefile", "ray_cluster.yaml"])
def test_no_torch_requirement_admits_a_version_below_2_6(name):
    specs = TORCH_SPEC.findall((ROOT / name).read_text())
    assert specs, f"no torch requirement found in {name}"
    for spec in specs:
        admitted = [v for v in BELOW_FLOOR if SpecifierSet(spec).contains(v, prereleases=True)]
        assert not admitted, f"{name}: torch{spec} admits {admitted}"
