"""The speed switches (comgan/speed.py) change how a step computes, never what: each stage's step
with every switch on, as training runs it, is compared with the plain formulation (all off, kept
for this) on the same weights, codes and inputs, in fp32: losses, every gradient, and the weights
after the optimisers' update."""
import copy
import dataclasses

import pytest
import torch
import torch.nn as nn

from cluster.config import load_config
from comgan import speed, winograd
from comgan.networks import GLU, Generator, conv_with_constant_channels, sample_codes
from comgan.training import Stage1State, Stage1Step, Stage2State, Stage2Step

FAST = speed.Formulation()  # what training runs: channels_last, code as bias, fused Adam (no compile: slow to start)
FAST_WINOGRAD = dataclasses.replace(FAST, winograd=True)  # the opt-in native kernel on top
PLAIN = speed.Formulation.plain()


def test_training_runs_every_switch_that_keeps_the_mathematics():
    """A config's speed section holds only the opt-in switches; a step built from it runs the
    fast formulation, which the tests below compare with the plain one."""
    for preset in ("default", "tiny", "paper", "photos"):
        assert speed.formulation(load_config(preset).speed) == FAST
    assert speed.formulation(load_config("tiny", ["speed.winograd=true"]).speed) == FAST_WINOGRAD


def with_speed(cfg, speed):
    cfg = copy.deepcopy(cfg)
    cfg.speed = copy.deepcopy(speed)
    return cfg


@pytest.fixture
def small(cfg):
    """The tiny preset at 32 px with an augmented D_z, so every code path of a step runs."""
    cfg.model.resolution = 32
    cfg.model.num_categories = 7
    cfg.stage1.augment = "color,translation,cutout"
    # Off here: the weight check below is sign-sensitive where a gradient is within rounding of zero,
    # and with the term one bias entry of the tiny net lands there (1.1e-4 against 0.066); the
    # next test compares the term's losses and gradients.
    cfg.stage1.composite_info_weight = 0.0
    return cfg


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def assert_same(reference: dict, other: dict, what: str, tol: float) -> None:
    assert reference.keys() == other.keys(), what
    gaps = {k: relative_gap(reference[k], other[k]) for k in reference}
    worst = max(gaps, key=gaps.get)
    assert gaps[worst] < tol, f"{what}: {worst} differs by {gaps[worst]:.2e} (relative)"


def assert_same_update(before: dict, reference: dict, other: dict, what: str, tol: float = 1e-3) -> None:
    """The weights after the optimisers' update agree up to entries whose gradient is within
    rounding of zero (Adam's first steps move each weight by about lr * sign(grad), so such an
    entry may move the other way): the mean difference is measured against the mean update."""
    for k in reference:
        moved = (reference[k] - before[k]).abs().mean()
        gap = (reference[k] - other[k]).abs().mean()
        assert gap <= tol * moved + 1e-12, f"{what}: {k} differs by {float(gap / moved):.2e} of its update"


def grads(state) -> dict:
    return {f"{name}.{k}": p.grad.clone() for name, net in state.trained().items()
            for k, p in net.named_parameters() if p.grad is not None}


def weights(state) -> dict:
    return {f"{name}.{k}": v.detach().clone() for name, net in state.trained().items()
            for k, v in net.state_dict().items() if v.is_floating_point()}


def loaded(state_cls, cfg, saved):
    state = state_cls.create(cfg)
    state.load_state_dict(copy.deepcopy(saved))  # Adam keeps the moments it is given and updates them
    return state


def run_steps(state_cls, step_cls, cfg, saved, real, steps=1, **step_kwargs):
    """`steps` steps from the saved state; the losses and gradients of the last, and the weights."""
    state = loaded(state_cls, cfg, saved)
    step = step_cls(state, cfg, **step_kwargs)
    torch.manual_seed(7)  # the same codes and augmentations for both formulations
    for _ in range(steps):
        stats = step(real)
    return state, stats


def test_stage1_step_with_composite_info_fast_equals_plain(small):
    small.stage1.composite_info_weight = 0.25
    torch.manual_seed(0)
    saved = Stage1State.create(with_speed(small, PLAIN)).state_dict()
    real = torch.rand(8, 3, 32, 32) * 2 - 1
    plain, plain_stats = run_steps(Stage1State, Stage1Step, with_speed(small, PLAIN), saved, real)
    fast, fast_stats = run_steps(Stage1State, Stage1Step, with_speed(small, FAST), saved, real)
    assert "loss/composite_info" in fast_stats
    assert_same(plain_stats, fast_stats, "losses", 1e-5)
    assert_same(grads(plain), grads(fast), "gradients", 1e-4)


def test_stage1_step_fast_equals_plain(small):
    torch.manual_seed(0)
    saved = Stage1State.create(with_speed(small, PLAIN)).state_dict()
    real = torch.rand(8, 3, 32, 32) * 2 - 1
    plain, plain_stats = run_steps(Stage1State, Stage1Step, with_speed(small, PLAIN), saved, real)
    fast, fast_stats = run_steps(Stage1State, Stage1Step, with_speed(small, FAST), saved, real)
    assert fast.G.fg_net.code_as_bias and not plain.G.fg_net.code_as_bias
    assert fast.G.fg_net.body[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(m.fused for m in fast.G.modules() if isinstance(m, GLU))
    assert not any(m.fused for m in plain.G.modules() if isinstance(m, GLU))
    assert_same(plain_stats, fast_stats, "losses", 1e-5)
    assert_same(grads(plain), grads(fast), "gradients", 1e-4)
    before = loaded(Stage1State, with_speed(small, PLAIN), saved)
    assert_same_update(weights(before), weights(plain), weights(fast), "weights after the update")


def fast_and_plain_generators(cfg, fast_speed=FAST):
    generator = Stage1State.create(with_speed(cfg, PLAIN)).G_ema
    fast = copy.deepcopy(generator)
    speed.prepare_networks([fast], fast_speed)
    return generator, fast


def test_stage2_step_fast_equals_plain(small):
    torch.manual_seed(0)
    generator, fast_generator = fast_and_plain_generators(small)
    saved = Stage2State.create(with_speed(small, PLAIN)).state_dict()
    real = torch.rand(8, 3, 32, 32) * 2 - 1
    plain, plain_stats = run_steps(Stage2State, Stage2Step, with_speed(small, PLAIN), saved, real, generator=generator)
    fast, fast_stats = run_steps(Stage2State, Stage2Step, with_speed(small, FAST), saved, real,
                                 generator=fast_generator)
    assert_same(plain_stats, fast_stats, "losses", 1e-5)
    assert_same(grads(plain), grads(fast), "gradients", 1e-4)
    before = loaded(Stage2State, with_speed(small, PLAIN), saved)
    assert_same_update(weights(before), weights(plain), weights(fast), "weights after the update")


@pytest.mark.parametrize("stage", [1, 2])
def test_steps_with_winograd_on_every_conv_equal_the_plain_step(small, monkeypatch, stage):
    """As above, with every 3x3 conv of the tiny nets by Winograd: the default width thresholds
    leave these narrow layers to the direct kernel (tests/comgan/test_winograd.py tests the rest)."""
    for name in ("MIN_IN_CHANNELS", "MIN_OUT_CHANNELS", "MIN_PIXELS"):
        monkeypatch.setattr(winograd, name, 1)
    calls = []
    apply = winograd._WinogradConv3x3.apply
    monkeypatch.setattr(winograd._WinogradConv3x3, "apply", lambda *args: calls.append(1) or apply(*args))
    torch.manual_seed(0)
    real = torch.rand(8, 3, 32, 32) * 2 - 1
    if stage == 1:
        saved = Stage1State.create(with_speed(small, PLAIN)).state_dict()
        runs = [run_steps(Stage1State, Stage1Step, with_speed(small, s), saved, real) for s in (PLAIN, FAST_WINOGRAD)]
    else:
        generator, fast_generator = fast_and_plain_generators(small, FAST_WINOGRAD)
        saved = Stage2State.create(with_speed(small, PLAIN)).state_dict()
        runs = [run_steps(Stage2State, Stage2Step, with_speed(small, s), saved, real, generator=g)
                for s, g in ((PLAIN, generator), (FAST_WINOGRAD, fast_generator))]
    (plain, plain_stats), (fast, fast_stats) = runs
    assert calls
    assert_same(plain_stats, fast_stats, "losses", 1e-5)
    assert_same(grads(plain), grads(fast), "gradients", 1e-4)


def test_training_does_not_drift_apart(small):
    """Several steps: the rounding differences (and an occasional Adam sign flip on a gradient
    within rounding of zero) stay at the level of rounding in the losses."""
    torch.manual_seed(0)
    saved = Stage1State.create(with_speed(small, PLAIN)).state_dict()
    real = torch.rand(8, 3, 32, 32) * 2 - 1
    _, plain_stats = run_steps(Stage1State, Stage1Step, with_speed(small, PLAIN), saved, real, steps=4)
    _, fast_stats = run_steps(Stage1State, Stage1Step, with_speed(small, FAST), saved, real, steps=4)
    assert_same(plain_stats, fast_stats, "losses after 4 steps", 1e-3)


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def test_the_same_trajectory_over_many_steps_in_float64(small, float64):
    """GAN training amplifies rounding differences step after step (in fp32 two runs decorrelate
    within about a hundred steps, so the default job's outcome on a seed is not the plain
    formulation's). In float64 the rounding starts near 1e-16, so the same mathematics must
    still give the same weights after many steps; a formulation that differed by more than
    rounding (a wrong border tap, a wrong code order) would not."""
    torch.manual_seed(0)
    saved = Stage1State.create(with_speed(small, PLAIN)).state_dict()
    real = torch.rand(4, 3, 32, 32) * 2 - 1  # 4 images: float64 convs are slow, and the steps are what counts
    plain, _ = run_steps(Stage1State, Stage1Step, with_speed(small, PLAIN), saved, real, steps=25)
    fast, _ = run_steps(Stage1State, Stage1Step, with_speed(small, FAST), saved, real, steps=25)
    assert next(fast.G.parameters()).dtype == torch.float64
    assert_same(weights(plain), weights(fast), "weights after 25 float64 steps", 1e-8)


def test_a_plain_checkpoint_resumes_in_the_fast_layout(small):
    """Adam's moments saved from NCHW networks meet NHWC parameters on resume: they take the
    parameters' layout, and the fused update pairs each moment with its own parameter's entries."""
    torch.manual_seed(0)
    plain_cfg, fast_cfg = with_speed(small, PLAIN), with_speed(small, FAST)
    real = torch.rand(8, 3, 32, 32) * 2 - 1
    state = Stage1State.create(plain_cfg)
    Stage1Step(state, plain_cfg)(real)
    saved = copy.deepcopy(state.state_dict())
    saved_weights = weights(state)
    plain, _ = run_steps(Stage1State, Stage1Step, plain_cfg, saved, real, steps=1)
    fast, _ = run_steps(Stage1State, Stage1Step, fast_cfg, saved, real, steps=1)
    moments = fast.opt_G.state[fast.G.fg_net.body[0][0].weight]["exp_avg"]
    assert moments.is_contiguous(memory_format=torch.channels_last)
    # the resumed run keeps its own switches: the plain checkpoint does not turn the fused Adam off
    assert all(group["fused"] for opt in (fast.opt_G, fast.opt_D) for group in opt.param_groups)
    assert_same_update(saved_weights, weights(plain), weights(fast), "weights after a resumed update")


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_code_as_bias_equals_tiled_channels(layout):
    """Exact in float64, at every border pixel and for any constant (not only one-hot) codes."""
    torch.manual_seed(0)
    conv = nn.Conv2d(7 + 5, 6, 3, 1, 1, bias=False).double().to(memory_format=layout)
    x = torch.randn(3, 5, 9, 6, dtype=torch.float64, requires_grad=True)
    code = torch.randn(3, 7, dtype=torch.float64)
    tiled = conv(torch.cat([code[:, :, None, None].expand(-1, -1, 9, 6), x], dim=1))
    fast = conv_with_constant_channels(conv, code, x.contiguous(memory_format=layout))
    assert torch.allclose(tiled, fast, rtol=0, atol=1e-12)
    g = torch.randn_like(tiled)
    grad_tiled = torch.autograd.grad(tiled, [conv.weight, x], g)
    grad_fast = torch.autograd.grad(fast, [conv.weight, x], g)
    for a, b in zip(grad_tiled, grad_fast):
        assert torch.allclose(a, b, rtol=0, atol=1e-11)


def test_generator_outputs_do_not_depend_on_the_code_path(cfg):
    torch.manual_seed(0)
    g = Generator(cfg.model).eval()
    codes = sample_codes(4, cfg.model)[:3]
    with torch.no_grad():
        fast = g(*codes)
        g.fg_net.code_as_bias = g.bg_net.code_as_bias = False
        plain = g(*codes)
    for name in ("image", "mask", "fg", "bg"):
        assert torch.allclose(getattr(plain, name), getattr(fast, name), atol=1e-6), name


@pytest.mark.parametrize("conv", [nn.Conv2d(5, 4, 3, stride=2, padding=1), nn.Conv2d(5, 4, 3, padding=0),
                                  nn.Conv2d(5, 4, 3, padding=2, dilation=2), nn.Conv2d(5, 4, 4, padding=2),
                                  nn.Conv2d(5, 4, 3, padding=1, padding_mode="reflect")])
def test_code_as_bias_refuses_convolutions_its_border_rule_does_not_fit(conv):
    with pytest.raises(ValueError, match="stride-1, zero-padded 'same'"):
        conv_with_constant_channels(conv, torch.ones(2, 2), torch.ones(2, 3, 8, 8))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_augmentation_keeps_the_layout_it_is_given(layout):
    from comgan.augment import diff_augment, parse_policy

    x = torch.rand(4, 3, 16, 16).contiguous(memory_format=layout)
    out = diff_augment(x, policy=parse_policy("color,translation,cutout"))
    assert out.is_contiguous(memory_format=layout)


def test_the_speed_benchmark_runs_and_reports_every_variant(tmp_path):
    """benchmarks/speed.py on the tiny preset: its report holds every variant's figures (not a
    timing test: the figures are only checked to exist and be consistent). --quick measures the
    conv roof on a small conv: the paper-size one is 2 TFLOP of work, most of a minute on a CPU.
    One thread, as every test without Ray (tests/conftest.py): the tiny steps' ops crawl with two on busy cores."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "speed.py"
    out = tmp_path / "speed.json"
    subprocess.run([sys.executable, str(script), "--preset", "tiny", "--batch", "4", "--steps", "1", "--rounds", "2",
                    "--variants", "plain", "fast", "--quick", "--out", str(out)], check=True, capture_output=True,
                   timeout=300)
    report = json.loads(out.read_text())
    assert set(report["conv_roof_gflop_s"]) == {"nchw", "channels_last"}
    for stage in ("stage1", "stage2"):
        plain, fast = report["stages"][stage]["plain"], report["stages"][stage]["fast"]
        assert plain["speedup"] == 1 and len(fast["rounds_s"]) == 2
        assert fast["gflop_per_image"] < plain["gflop_per_image"]  # the code no longer costs conv input channels
        assert fast["useful_gflop_s"] > fast["achieved_gflop_s"] > 0
    bad = subprocess.run([sys.executable, str(script), "--preset", "tiny", "--variants", "fast+tf32"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "only means something on a GPU" in bad.stderr
