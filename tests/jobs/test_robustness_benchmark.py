"""benchmarks/robustness.py's stage-2 screen, in this process on the tiny config and an untrained
generator: the stage-2 curve, and that scoring along the way leaves the run as it was. No Ray."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cluster.config import load_config
from comgan.artifacts import generator_artifact, to_bytes
from comgan.training import Stage1State

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def robustness(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import robustness

    return robustness


def stage2(robustness, cfg, generator, curve_every):
    torch.manual_seed(0)
    data = torch.Generator().manual_seed(1)
    scored = []

    def score(net):
        scored.append(net.training)
        with torch.no_grad():
            return net(torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1).mean().item()

    S, teacher, curve = robustness.screen_stage2(cfg, generator, lambda n: torch.rand(n, 3, 16, 16, generator=data) * 2 - 1,
                                                 score, curve_every)
    return S, teacher, curve, scored


def test_scoring_along_stage2_leaves_the_run_as_it_was(robustness):
    cfg = load_config("tiny", [])
    generator = Stage1State.create(cfg).G_ema.eval()
    S, teacher, curve, _ = stage2(robustness, cfg, generator, 0)
    S2, teacher2, curve2, scored = stage2(robustness, cfg, generator, 1)
    assert curve == [] and [row[0] for row in curve2] == [1, 2, 3, 4]  # tiny's stage 2: 4 steps
    assert scored == [False] * 8  # S and its teacher after each of the 4 steps, in eval mode
    for net, again in ((S, S2), (teacher, teacher2)):
        for (name, a), b in zip(net.state_dict().items(), again.state_dict().values()):
            assert torch.equal(a, b), name


def test_a_stage2_only_draw_reports_its_curve(robustness, tmp_path):
    cfg = load_config("tiny", [])
    path = tmp_path / "tiny_native_seed0.pt"
    path.write_bytes(to_bytes(generator_artifact(Stage1State.create(cfg).G_ema.eval(), cfg.model)))
    row = robustness.screen_draw(0, "native", "tiny", [], "", str(path), curve_every=3)
    assert [step for step, _, _ in row["s2_curve"]] == [3, 4]
    assert row["s2_curve"][-1][1:] == pytest.approx([row["iou"], row["iou_other_net"]])
