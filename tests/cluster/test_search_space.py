"""Search-space specs of Tune sweeps: typed values and one-line errors (their Tune domains: test_tune.py)."""
from __future__ import annotations

import pytest

from cluster.search_space import Axis, parse_space, specs_from_yaml
from comgan.config import ConfigError


def test_the_issue_example_parses_into_typed_axes(cfg):
    axes = parse_space(["beta=0,0.5,1,2", "lam=loguniform:0.5:8", "N=3,6,12", "stage1.steps=4,8"], cfg)
    assert axes == [Axis("stage1.beta", values=(0.0, 0.5, 1.0, 2.0)),
                    Axis("stage2.lam", kind="loguniform", low=0.5, high=8.0),
                    Axis("model.num_categories", values=(3, 6, 12)),
                    Axis("stage1.steps", values=(4, 8))]
    assert all(type(v) is int for v in axes[2].values), "N is an integer key"


def test_a_sweep_yaml_space_reads_like_the_command_line(cfg):
    specs = specs_from_yaml({"beta": [0, 0.5], "lam": "loguniform:0.5:8", "stage1.orient_mask": [True, False]})
    assert specs == ["beta=0,0.5", "lam=loguniform:0.5:8", "stage1.orient_mask=true,false"]
    assert parse_space(specs, cfg)[2].values == (True, False)


@pytest.mark.parametrize("specs, words", [
    (["modle.num_categories=3"], "modle"),
    (["stage1.bta=1"], "bta"),
    (["lam=loguniform:8:0.5"], "is empty"),
    (["lam=uniform:1:1"], "is empty"),
    (["lam=loguniform:0:8"], "LOW > 0"),
    (["N=0,3"], "num_categories (N) must be >= 1"),
    (["N=randint:0:4"], "num_categories (N) must be >= 1"),
    (["beta="], "no values"),
    (["beta=0,,1"], "no values"),
    (["beta=a"], "beta"),
    (["beta=-1"], "stage1.beta must be >= 0"),
    (["beta=1,1"], "listed twice"),
    (["beta=0,1", "stage1.beta=2"], "given twice"),
    (["lam=uniform:1"], "LOW:HIGH"),
    (["beta=randint:0:3"], "randint is for integer keys"),
    (["data.eval=uniform:0:1"], "not a number"),
    (["justaword"], "KEY=VALUES"),
    ([], "empty"),
])
def test_bad_specs_are_one_line_errors(cfg, specs, words):
    with pytest.raises(ConfigError) as e:
        parse_space(specs, cfg)
    assert words in str(e.value) and "\n" not in str(e.value), str(e.value)
