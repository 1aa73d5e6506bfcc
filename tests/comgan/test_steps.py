"""What each phase of the stage-1 and stage-2 steps touches, which tensor each loss term sees,
how lambda and adv_weight weight stage 2's loss, and IoU / Dice on empty masks.

The steps take a `backward` callable (loss -> None); wrapping it lets a test look at gradients
between the two phases of a step. Stub networks that record their inputs pin down which tensor
every discriminator term sees (real, x_bar, x_bar_z, x_bar_f, x_bar_b, S(x_bar), S(x), x_bar_m).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from unittest import mock

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from comgan.ema import make_ema
from comgan.metrics import iou_dice, segmentation_scores
from comgan.networks import GeneratorOutput
from comgan import training
from comgan.training import Stage1State, Stage1Step, Stage2State, Stage2Step


def real_batch(cfg, n=4):
    r = cfg.model.resolution
    return torch.rand(n, 3, r, r) * 2 - 1


# ---------------------------------------------------------------------------------------------
# 1. Gradient isolation between the phases (real tiny networks)


class GradDeltaRecorder:
    """A `backward` that runs loss.backward() and records, per call, which parameters of each
    watched module received a gradient *from that call* (.grad changed; stale grads left over
    from an earlier phase or step do not count)."""

    def __init__(self, **modules: nn.Module):
        self.modules = modules
        self.calls: list[dict[str, set[str]]] = []

    def __call__(self, loss: torch.Tensor) -> None:
        before = {m: {k: None if p.grad is None else p.grad.clone() for k, p in mod.named_parameters()}
                  for m, mod in self.modules.items()}
        loss.backward()
        touched = {}
        for m, mod in self.modules.items():
            touched[m] = set()
            for k, p in mod.named_parameters():
                old = before[m][k]
                if p.grad is None:
                    continue
                if (old is None and p.grad.abs().sum() > 0) or (old is not None and not torch.equal(old, p.grad)):
                    touched[m].add(k)
        self.calls.append(touched)


def test_stage1_phases_are_gradient_isolated(cfg):
    """Phase Dz (L_D) gives G, D_f and D_b nothing; phase Gmain (L_G) gives D_z nothing. Two
    steps, so the second step starts with G's gradients of the first still in place."""
    torch.manual_seed(0)
    state = Stage1State.create(cfg)
    rec = GradDeltaRecorder(G=state.G, D_z=state.D_z, D_f=state.D_f, D_b=state.D_b)
    step = Stage1Step(state, cfg, backward=rec)
    for _ in range(2):
        step(real_batch(cfg))
    assert len(rec.calls) == 4, "one backward per phase"
    all_params = {m: {k for k, _ in getattr(state, m).named_parameters()} for m in ("G", "D_z", "D_f", "D_b")}
    for d_phase, g_phase in (rec.calls[0:2], rec.calls[2:4]):
        assert d_phase["D_z"] == all_params["D_z"], "L_D reaches every parameter of D_z"
        for m in ("G", "D_f", "D_b"):
            assert not d_phase[m], f"L_D leaked a gradient into {m}: {sorted(d_phase[m])[:5]}"
        assert not g_phase["D_z"], f"L_G leaked a gradient into D_z: {sorted(g_phase['D_z'])[:5]}"
        for m in ("G", "D_f", "D_b"):
            assert g_phase[m] == all_params[m], f"L_G reaches every parameter of {m}"


def test_stage2_phases_are_gradient_isolated(cfg):
    """Phase Dm gives S nothing; phase S gives D_m nothing; the frozen generator gets nothing."""
    torch.manual_seed(0)
    gen = Stage1State.create(cfg).G_ema
    state = Stage2State.create(cfg)
    rec = GradDeltaRecorder(S=state.S, D_m=state.D_m, generator=gen)
    step = Stage2Step(state=state, cfg=cfg, generator=gen, backward=rec)
    for _ in range(2):
        step(real_batch(cfg))
    assert len(rec.calls) == 4, "one backward per phase"
    all_s = {k for k, _ in state.S.named_parameters()}
    all_dm = {k for k, _ in state.D_m.named_parameters()}
    for dm_phase, s_phase in (rec.calls[0:2], rec.calls[2:4]):
        assert dm_phase["D_m"] == all_dm
        assert not dm_phase["S"], f"the D_m loss leaked a gradient into S: {sorted(dm_phase['S'])[:5]}"
        assert not s_phase["D_m"], f"the S loss leaked a gradient into D_m: {sorted(s_phase['D_m'])[:5]}"
        assert s_phase["S"] == all_s
        assert not dm_phase["generator"] and not s_phase["generator"]


# ---------------------------------------------------------------------------------------------
# 2. Which tensor each loss term sees (stub networks that record their inputs)


class Phase:
    """Counts backward calls: 0 = before the first (D phase), 1 = between (G / S phase)."""

    def __init__(self):
        self.n = 0

    def backward(self, loss):
        loss.backward()
        self.n += 1


@dataclasses.dataclass
class Call:
    net: str
    phase: int
    x: torch.Tensor
    requires_grad: bool
    out: torch.Tensor


class RecordingD(nn.Module):
    """A discriminator stub: logits from a tiny trainable layer on each image's mean; logs calls."""

    def __init__(self, name: str, n_out: int, log: list, phase: Phase):
        super().__init__()
        self.name, self.n_out, self.log, self.phase = name, n_out, log, phase
        self.lin = nn.Linear(1, n_out)

    def forward(self, x):
        out = self.lin(x.flatten(1).mean(1, keepdim=True))
        out = out.squeeze(1) if self.n_out == 1 else out
        self.log.append(Call(self.name, self.phase.n, x, x.requires_grad, out.detach().clone()))
        return out


class RecordingWrapper(nn.Module):
    """Stands in for a DDP wrapper: same parameters as `inner`, logs calls made through it."""

    def __init__(self, inner: RecordingD):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        self.inner.log.append(Call(self.inner.name + "[wrapped]", self.inner.phase.n, x, x.requires_grad,
                                   out.detach().clone()))
        return out


FG, BG, MASK, GLOBAL = 0.5, -0.5, 0.3, 0.8


class StubGenerator(nn.Module):
    """x_bar_f = +0.5, x_bar_b = -0.5, x_bar_m = 0.3, x_bar_z = 0.8 (times a trainable scale 1)."""

    def __init__(self, resolution: int):
        super().__init__()
        self.r = resolution
        self.w = nn.Parameter(torch.ones(()))
        self.outputs: list[tuple[GeneratorOutput, torch.Tensor, torch.Tensor]] = []

    def forward(self, z, f, b):
        n, r = z.shape[0], self.r
        fg = torch.full((n, 3, r, r), FG) * self.w
        bg = torch.full((n, 3, r, r), BG) * self.w
        mask = torch.full((n, 1, r, r), MASK) * self.w
        out = GeneratorOutput(image=mask * fg + (1 - mask) * bg, mask=mask, fg=fg, bg=bg,
                              global_image=torch.full((n, 3, r, r), GLOBAL) * self.w)
        self.outputs.append((out, f, b))
        return out


def label(x: torch.Tensor, refs: dict[str, torch.Tensor]) -> str:
    for name, ref in refs.items():
        if x.shape == ref.shape and torch.allclose(x.detach(), ref.detach(), rtol=0, atol=1e-6):
            return name
    return "unknown"


def calls_of(log, net, phase):
    return [c for c in log if c.net == net and c.phase == phase]


def assert_discriminator_inputs(log, refs, net: str, wrapped: bool, d_phase: list, g_phase: list) -> None:
    """`net` sees `d_phase` detached in its own phase (0) and `g_phase` attached in the other
    phase (1); when wrapped, only its own phase goes through the wrapper."""
    def seen(name, ph):
        return sorted(label(c.x, refs) for c in calls_of(log, name, ph))

    assert seen(net, 0) == d_phase
    assert not any(c.requires_grad for c in calls_of(log, net, 0)), f"{net}'s phase must see detached inputs"
    assert seen(net, 1) == g_phase
    assert all(c.requires_grad for c in calls_of(log, net, 1)), f"the other phase's loss must reach through {net}"
    if wrapped:  # the wrapped network trains; the plain one, frozen, judges
        assert seen(f"{net}[wrapped]", 0) == d_phase
        assert seen(f"{net}[wrapped]", 1) == [], f"the other phase must call the plain {net}, not the wrapped one"


def assert_close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def recorded_stage1(cfg) -> tuple[Stage1State, list, Phase]:
    """A stage-1 state of stubs whose discriminators log every call into the returned list."""
    log, phase = [], Phase()
    G = StubGenerator(cfg.model.resolution)
    n_cat = cfg.model.num_categories
    D_z, D_f, D_b = (RecordingD("D_z", 1, log, phase), RecordingD("D_f", n_cat, log, phase),
                     RecordingD("D_b", n_cat, log, phase))
    state = Stage1State(G, D_z, D_f, D_b, copy.deepcopy(G).requires_grad_(False),
                        torch.optim.Adam(D_z.parameters(), lr=1e-3),
                        torch.optim.Adam([*G.parameters(), *D_f.parameters(), *D_b.parameters()], lr=1e-3))
    return state, log, phase


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "wrapped_D_z"])
def test_stage1_loss_terms_see_the_right_tensors(cfg, wrapped):
    """The paper's L_D and L_G (section 4 of docs/DESIGN.md): the composite info term, not in the
    paper, is off here and has its own test below."""
    cfg.stage1.composite_info_weight = 0.0
    torch.manual_seed(0)
    state, log, phase = recorded_stage1(cfg)
    G, D_z = state.G, state.D_z
    extra = {"prepared": {"D_z": RecordingWrapper(D_z)}} if wrapped else {}
    torch.manual_seed(5)
    real = real_batch(cfg, 8)
    stats = Stage1Step(state, cfg, backward=phase.backward, **extra)(real)
    assert phase.n == 2

    out, f, b = G.outputs[-1]
    refs = {"real": real, "x_bar": out.image, "x_bar_z": out.global_image, "x_bar_f": out.fg,
            "x_bar_b": out.bg, "x_bar_m": out.mask}
    assert len({label(t, refs) for t in refs.values()}) == len(refs), "the stub's tensors are distinguishable"

    def seen(net, ph):
        return sorted(label(c.x, refs) for c in calls_of(log, net, ph))

    # Phase Dz: D_z sees real, x_bar and x_bar_z, the fakes detached from G; phase Gmain: it
    # judges x_bar and x_bar_z, attached to G so L_G reaches it.
    assert_discriminator_inputs(log, refs, "D_z", wrapped, ["real", "x_bar", "x_bar_z"], ["x_bar", "x_bar_z"])
    # The info heads see the unmasked parts, once each, in phase Gmain, attached to G.
    assert seen("D_f", 0) == seen("D_b", 0) == []
    assert seen("D_f", 1) == ["x_bar_f"] and seen("D_b", 1) == ["x_bar_b"]
    assert all(c.requires_grad for c in calls_of(log, "D_f", 1) + calls_of(log, "D_b", 1))
    assert not [c for c in log if c.phase > 1], "nothing is called after the last backward"

    # The reported losses are built from exactly those calls, with the right targets.
    def out_of(net, ph, name):
        (c,) = [c for c in calls_of(log, net, ph) if label(c.x, refs) == name]
        return c.out

    one, zero = torch.ones(8), torch.zeros(8)
    bce = F.binary_cross_entropy_with_logits
    assert_close(stats["loss/D_z"], bce(out_of("D_z", 0, "real"), one) + bce(out_of("D_z", 0, "x_bar"), zero)
                 + bce(out_of("D_z", 0, "x_bar_z"), zero))
    assert_close(stats["loss/G_adv"], bce(out_of("D_z", 1, "x_bar"), one) + bce(out_of("D_z", 1, "x_bar_z"), one))
    f_idx, b_idx = f.argmax(1), b.argmax(1)
    assert (f_idx != b_idx).any(), "codes drawn independently (and the test can tell f from b)"
    assert_close(stats["loss/D_f_info"], F.cross_entropy(out_of("D_f", 1, "x_bar_f"), f_idx))
    assert_close(stats["loss/D_b_info"], F.cross_entropy(out_of("D_b", 1, "x_bar_b"), b_idx))
    h2 = -(MASK * math.log2(MASK) + (1 - MASK) * math.log2(1 - MASK))  # 0.8813: H2 of the mask value
    assert stats["loss/binary_entropy"].item() == pytest.approx(h2, rel=1e-5)


class StubMaskGenerator(nn.Module):
    """The frozen generator of stage 2: fixed random images in [-1, 1] and masks in (0.05, 0.95)."""

    def __init__(self, resolution: int, n: int):
        super().__init__()
        g = torch.Generator().manual_seed(11)
        self.register_buffer("img", torch.rand(n, 3, resolution, resolution, generator=g) * 2 - 1)
        self.register_buffer("mask", torch.rand(n, 1, resolution, resolution, generator=g) * 0.9 + 0.05)

    def forward(self, z, f, b):
        n = z.shape[0]
        img = self.img[:n]
        return GeneratorOutput(image=img, mask=self.mask[:n], fg=img, bg=img, global_image=img)


class StubSegmenter(nn.Module):
    """S: per-pixel sigmoid of a 1x1 conv (no batch statistics: S(x) does not depend on the batch)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)

    def forward(self, x):
        return torch.sigmoid(self.conv(x))


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "wrapped_D_m"])
def test_stage2_loss_terms_see_the_right_tensors(cfg, wrapped):
    torch.manual_seed(0)
    n, res = 8, cfg.model.resolution
    log, phase = [], Phase()
    gen, S = StubMaskGenerator(res, n).eval(), StubSegmenter()
    D_m = RecordingD("D_m", 1, log, phase)
    state = Stage2State(S, D_m, make_ema(S), torch.optim.Adam(S.parameters(), lr=1e-3),
                        torch.optim.Adam(D_m.parameters(), lr=1e-3))
    extra = {"prepared": {"D_m": RecordingWrapper(D_m)}} if wrapped else {}
    S0 = copy.deepcopy(S)  # S as the step sees it (it is only updated at the end)
    torch.manual_seed(5)
    real = real_batch(cfg, n)
    stats = Stage2Step(state=state, cfg=cfg, generator=gen, backward=phase.backward, **extra)(real)
    assert phase.n == 2

    with torch.no_grad():
        refs = {"x_bar_m": gen.mask, "S(x_bar)": S0(gen.img), "S(x)": S0(real)}
    assert len({label(t, refs) for t in refs.values()}) == len(refs)

    # Phase Dm: the generator's mask is real, S's predictions on both domains are fake (detached);
    # phase S: D_m judges both predictions, attached to S.
    assert_discriminator_inputs(log, refs, "D_m", wrapped, ["S(x)", "S(x_bar)", "x_bar_m"], ["S(x)", "S(x_bar)"])
    assert not [c for c in log if c.phase > 1]

    def out_of(ph, name):
        (c,) = [c for c in calls_of(log, "D_m", ph) if label(c.x, refs) == name]
        return c.out

    one, zero = torch.ones(n), torch.zeros(n)
    bce = F.binary_cross_entropy_with_logits
    assert_close(stats["loss/D_m"], bce(out_of(0, "x_bar_m"), one) + bce(out_of(0, "S(x_bar)"), zero)
                 + bce(out_of(0, "S(x)"), zero))
    assert_close(stats["loss/S_adv"], bce(out_of(1, "S(x_bar)"), one) + bce(out_of(1, "S(x)"), one))
    # Consistency: S(x_bar) against x_bar_m (not S(x), not the image).
    assert_close(stats["loss/S_consistency"], (refs["S(x_bar)"] - gen.mask).abs().mean())
    assert (refs["S(x)"] - gen.mask).abs().mean() != pytest.approx(stats["loss/S_consistency"].item(), abs=1e-4)


# ---------------------------------------------------------------------------------------------
# 3. lambda and adv_weight (real tiny networks)


def run_stage2(cfg, lam: float = 2.0, adv_weight: float = 1.0, perturb: str | None = None, step: int = 0):
    """One stage-2 step from fixed seeds, taken at `step`; returns its stats and S's gradient from
    phase S. `perturb` names a network of the state ("D_m", "S_teacher") to replace by one unlike it."""
    cfg = copy.deepcopy(cfg)
    cfg.stage2.lam, cfg.stage2.adv_weight = lam, adv_weight
    torch.manual_seed(0)
    gen = Stage1State.create(cfg).G_ema
    state = Stage2State.create(cfg)
    state.step = step
    if perturb:  # its own random stream leaves the global one untouched
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for p in getattr(state, perturb).parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    grads, calls = {}, []

    def backward(loss):
        loss.backward()
        calls.append(1)
        if len(calls) == 2:
            grads.update({k: p.grad.clone() for k, p in state.S.named_parameters() if p.grad is not None})

    torch.manual_seed(1)
    stats = Stage2Step(state=state, cfg=cfg, generator=gen, backward=backward)(real_batch(cfg))
    assert len(calls) == 2
    return stats, grads


def test_stage2_lambda_and_adv_weight_weight_their_terms(cfg):
    assert (cfg.stage2.lam, cfg.stage2.adv_weight) == (2.0, 1.0)
    base, _ = run_stage2(cfg, 2.0, 1.0)
    lam5, _ = run_stage2(cfg, 5.0, 1.0)
    adv03, _ = run_stage2(cfg, 2.0, 0.3)
    cons, adv = base["loss/S_consistency"], base["loss/S_adv"]
    assert cons > 0 and adv > 0
    for st in (lam5, adv03):  # same seeds: the terms themselves do not depend on the weights
        torch.testing.assert_close(st["loss/S_consistency"], cons)
        torch.testing.assert_close(st["loss/S_adv"], adv)
    torch.testing.assert_close(base["loss/S_total"], 2.0 * cons + 1.0 * adv)
    torch.testing.assert_close(lam5["loss/S_total"], 5.0 * cons + 1.0 * adv)
    torch.testing.assert_close(adv03["loss/S_total"], 2.0 * cons + 0.3 * adv)
    torch.testing.assert_close(lam5["loss/S_total"] - base["loss/S_total"], 3.0 * cons, rtol=1e-4, atol=1e-5)


def test_stage2_adv_weight_zero_removes_dm_from_s_gradient(cfg):
    """With adv_weight = 0, S's update does not depend on D_m at all (checked on the gradient
    S actually gets, not on the reported total); with adv_weight = 1 it does (control)."""
    _, g0 = run_stage2(cfg, 2.0, 0.0)
    _, g0_other = run_stage2(cfg, 2.0, 0.0, perturb="D_m")
    assert g0.keys() == {k for k, _ in Stage2State.create(cfg).S.named_parameters()}
    for k in g0:
        torch.testing.assert_close(g0[k], g0_other[k], rtol=0, atol=0, msg=f"D_m changed S's gradient at {k}")
    _, g1 = run_stage2(cfg, 2.0, 1.0)
    _, g1_other = run_stage2(cfg, 2.0, 1.0, perturb="D_m")
    assert any(not torch.equal(g1[k], g1_other[k]) for k in g1), "control: with adv_weight 1, D_m matters"


def self_training_step(cfg, start: int, step: int, perturb_teacher: bool = False):
    """run_stage2 with self-training configured to begin at `start`, taken at `step`."""
    cfg = copy.deepcopy(cfg)
    cfg.stage2.self_train.weight, cfg.stage2.self_train.start = 1.0, start
    # An untrained teacher is nowhere confident: learn every pixel.
    with mock.patch.object(training, "SELF_TRAIN_CONFIDENCE", 0.5):
        return run_stage2(cfg, perturb="S_teacher" if perturb_teacher else None, step=step)


def test_self_training_starts_at_its_step_and_learns_from_the_teacher(cfg):
    """Before stage2.self_train.start S's update ignores the teacher (bit for bit); from it on the
    teacher's labels change S's gradient and the term is reported and added to S's total."""
    _, before = self_training_step(cfg, start=5, step=4)
    _, before_other = self_training_step(cfg, start=5, step=4, perturb_teacher=True)
    for k in before:
        torch.testing.assert_close(before[k], before_other[k], rtol=0, atol=0, msg=f"teacher used early at {k}")
    stats, after = self_training_step(cfg, start=5, step=5)
    _, after_other = self_training_step(cfg, start=5, step=5, perturb_teacher=True)
    assert any(not torch.equal(after[k], after_other[k]) for k in after), "the teacher did not reach S"
    assert stats["loss/S_self_train"] > 0 and 0 < stats["seg/confident_share"] <= 1
    torch.testing.assert_close(stats["loss/S_total"], 2.0 * stats["loss/S_consistency"] + stats["loss/S_adv"]
                               + stats["loss/S_self_train"])


@pytest.mark.parametrize("key, value", [("colour_bins", 4), ("area_guard", 0.99)])
def test_self_training_options_reach_the_step(cfg, key, value):
    plain_stats, _ = self_training_step(cfg, start=0, step=0)
    cfg = copy.deepcopy(cfg)
    setattr(cfg.stage2.self_train, key, value)
    stats, _ = self_training_step(cfg, start=0, step=0)
    assert stats["loss/S_self_train"] != plain_stats["loss/S_self_train"]


def test_pseudo_labels_move_with_the_image_and_a_cutout_leaves_the_loss(cfg, monkeypatch):
    """The student's view and the teacher's labels get one transform; a cut-out square zeroes the
    image and the confident weight there (colour and translation off: only the cutout acts)."""
    monkeypatch.setattr(training, "SELF_TRAIN_CONFIDENCE", 0.5)
    monkeypatch.setattr(training, "SELF_TRAIN_AUGMENT", "cutout")
    state = Stage2State.create(cfg)
    step = Stage2Step(state=state, cfg=cfg, generator=Stage1State.create(cfg).G_ema)
    real = real_batch(cfg).clamp(min=0.1)  # no zero pixel outside the cutout
    torch.manual_seed(0)
    seen, pseudo, confident, _ = step.pseudo_labels(real, torch.tensor(0.3))
    cut = seen == 0
    assert cut.any() and not cut.all()
    assert torch.equal(cut.all(1, keepdim=True), confident == 0)
    assert torch.equal(seen[~cut], real[~cut])
    with torch.no_grad():  # the teacher's labels of the plain photo, outside the square
        expected = (state.S_teacher(real) + state.S_teacher(real.flip(-1)).flip(-1)) / 2 > 0.5
    kept = confident > 0
    assert torch.equal(pseudo[kept].bool(), expected[kept])


def test_the_area_guard_holds_back_images_whose_teacher_sees_too_little_or_too_much():
    from comgan.training import area_within
    masks = torch.zeros(4, 1, 10, 10)
    masks[1, :, :1] = 1    # 10 % foreground
    masks[2, :, :3] = 1    # 30 %
    masks[3, :, :9] = 1    # 90 %: 10 % background
    area = torch.tensor(0.3)  # the generated masks' mean area
    # guard 0.5: foreground >= 15 % and background >= 35 %; 0: every image; 0.3: 9 % and 21 %
    assert area_within(masks, area, 0.5).tolist() == [0, 0, 1, 0]
    assert area_within(masks, area, 0.0).tolist() == [1, 1, 1, 1]
    assert area_within(masks, area, 0.3).tolist() == [0, 1, 1, 0]


def test_a_guarded_image_leaves_the_self_training_loss(cfg, monkeypatch):
    """An empty teacher mask is held back (the guard zeroes its confident weight); without the
    guard the same image is learnt as all background."""
    cfg = copy.deepcopy(cfg)
    monkeypatch.setattr(training, "SELF_TRAIN_AUGMENT", "")
    state = Stage2State.create(cfg)
    step = Stage2Step(state=state, cfg=cfg, generator=Stage1State.create(cfg).G_ema)
    with torch.no_grad():
        for p in state.S_teacher.parameters():
            p.zero_()  # sigmoid(0) = 0.5 everywhere ...
        list(state.S_teacher.parameters())[-1].fill_(-10.0)  # ... shifted by the last bias: sure of background
    real = real_batch(cfg)
    _, pseudo, confident, unguarded = step.pseudo_labels(real, torch.tensor(0.3))
    assert pseudo.sum() == 0 and confident.all() and unguarded.all()
    cfg.stage2.self_train.area_guard = 0.25
    _, _, confident, unguarded = step.pseudo_labels(real, torch.tensor(0.3))
    assert not unguarded.any() and not confident.any()


def test_teacher_is_an_ema_of_s_from_the_first_step(cfg, monkeypatch):
    monkeypatch.setattr(training, "SELF_TRAIN_EMA", 0.9)
    torch.manual_seed(0)
    gen = Stage1State.create(cfg).G_ema
    state = Stage2State.create(cfg)
    teacher_before = copy.deepcopy(state.S_teacher.state_dict())
    Stage2Step(state=state, cfg=cfg, generator=gen)(real_batch(cfg))
    for name, p in state.S.named_parameters():
        expected = teacher_before[name].lerp(p.detach(), 0.1)
        torch.testing.assert_close(state.S_teacher.state_dict()[name], expected)
    assert not any(p.requires_grad for p in state.S_teacher.parameters()) and not state.S_teacher.training


def test_stage2_exports_the_teacher_when_asked(cfg):
    from comgan.stages import STAGE2
    torch.manual_seed(0)
    gen = Stage1State.create(cfg).G_ema
    state = Stage2State.create(cfg)
    Stage2Step(state=state, cfg=cfg, generator=gen)(real_batch(cfg))  # S moves; its EMA lags behind
    for export_teacher, chosen, other in ((False, state.S, state.S_teacher), (True, state.S_teacher, state.S)):
        cfg = copy.deepcopy(cfg)
        cfg.stage2.self_train.export_teacher = export_teacher
        artifact, _ = STAGE2.export(state, cfg, 4)
        assert artifact["network"] == ("S_teacher" if export_teacher else "S")
        for name, value in artifact["state_dict"].items():
            torch.testing.assert_close(value, chosen.state_dict()[name], rtol=0, atol=0)
        assert any(not torch.equal(v, other.state_dict()[k]) for k, v in artifact["state_dict"].items())


def test_stage2_checkpoint_without_a_teacher_still_loads(cfg):
    """Checkpoints written before self-training existed hold no S_teacher: it starts as S."""
    torch.manual_seed(0)
    old = Stage2State.create(cfg)
    saved = old.state_dict()
    assert "S_teacher" in saved
    del saved["S_teacher"]
    torch.manual_seed(1)
    new = Stage2State.create(cfg)
    new.load_state_dict(saved)
    for (name, a), b in zip(new.S_teacher.state_dict().items(), old.S.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_pseudo_label_loss_counts_only_confident_pixels():
    from comgan.losses import pseudo_label_loss
    pred = torch.tensor([0.9, 0.2, 0.5, 0.5]).view(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 2, 2)
    weight = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 2, 2)
    expected = -(math.log(0.9) + math.log(0.8)) / 2  # the two unweighted pixels would add log(0.5)s
    assert pseudo_label_loss(pred, target, weight).item() == pytest.approx(expected, rel=1e-6)
    assert pseudo_label_loss(pred, target, torch.zeros_like(weight)).item() == 0.0
    saturated = pseudo_label_loss(torch.zeros(1, 1, 2, 2, dtype=torch.bfloat16), torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    assert math.isfinite(saturated.item()) and saturated.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# 4. IoU and Dice, strict and in the paper's convention, including empty masks


def mask_from(pixels: list[tuple[int, int]]) -> torch.Tensor:
    m = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    for y, x in pixels:
        m[0, 0, y, x] = True
    return m


EMPTY = mask_from([])
FULL = ~EMPTY
GT3 = mask_from([(0, 0), (0, 1), (0, 2)])                                 # 3 px
PRED5 = mask_from([(0, 0), (0, 1), (1, 0), (1, 1), (2, 2)])               # 5 px
GT6 = mask_from([(0, 0), (0, 1), (2, 2), (3, 0), (3, 1), (3, 2)])         # 6 px; 3 of them in PRED5

# (name, prediction, truth, strict IoU, strict Dice, paper IoU, paper Dice), all by hand.
CASES = [
    # Two empty masks agree perfectly. The complement (16 px) vs nothing scores 0: no flip.
    ("both empty", EMPTY, EMPTY, 1.0, 1.0, 1.0, 1.0),
    # Nothing predicted, 3 px true: 0. The complement (16 px) holds all 3: IoU 3/16, Dice 6/19.
    ("empty pred", EMPTY, GT3, 0.0, 0.0, 3 / 16, 6 / 19),
    # 5 px predicted, nothing true: union 5, total 5 -> 0; the complement (11 px) also scores 0.
    ("empty truth", PRED5, EMPTY, 0.0, 0.0, 0.0, 0.0),
    # Everything predicted, nothing true: 0 strict; the complement is empty vs empty -> 1.
    ("full pred, empty truth", FULL, EMPTY, 0.0, 0.0, 1.0, 1.0),
    # Overlap 3, union 5 + 6 - 3 = 8: IoU 3/8, Dice 6/11. Complement (11 px): overlap 3,
    # union 11 + 6 - 3 = 14 -> 3/14 < 3/8: no flip.
    ("partial", PRED5, GT6, 3 / 8, 6 / 11, 3 / 8, 6 / 11),
    # The complement of PRED5 (11 px): overlap 3, union 14 -> IoU 3/14, Dice 6/17; the paper
    # convention flips back to PRED5 and takes IoU and Dice from it: 3/8 and 6/11.
    ("partial, inverted", ~PRED5, GT6, 3 / 14, 6 / 17, 3 / 8, 6 / 11),
]


def test_iou_dice_by_hand_including_empty_masks():
    pred = torch.cat([c[1] for c in CASES])
    gt = torch.cat([c[2] for c in CASES])
    iou, dice = iou_dice(pred, gt)
    scores = segmentation_scores(pred, gt)
    for i, (name, _, _, iou_s, dice_s, iou_p, dice_p) in enumerate(CASES):
        assert iou[i].item() == pytest.approx(iou_s), name
        assert dice[i].item() == pytest.approx(dice_s), name
        assert scores["iou_strict"][i].item() == pytest.approx(iou_s), name
        assert scores["dice_strict"][i].item() == pytest.approx(dice_s), name
        assert scores["iou_paper"][i].item() == pytest.approx(iou_p), name
        assert scores["dice_paper"][i].item() == pytest.approx(dice_p), name
    # Per-image scores: one image at a time gives the same numbers as the batch.
    for i, (name, p, g, *_rest) in enumerate(CASES):
        single = segmentation_scores(p, g)
        for k in scores:
            assert single[k].item() == pytest.approx(scores[k][i].item()), (name, k)


def test_composite_info_weight_asks_a_frozen_d_f_to_read_f_from_the_composite(cfg):
    """With stage1.composite_info_weight = w, D_f learns from x_f as before, and in phase Gmain the
    plain D_f, its weights frozen for that call, also reads f from x_bar: that CE is reported and
    added w times to L_G, so it moves G only. D_b still sees x_b alone."""
    cfg = copy.deepcopy(cfg)
    cfg.stage1.composite_info_weight = 0.7
    state, log, phase = recorded_stage1(cfg)
    G, D_f = state.G, state.D_f
    trainable_at_call = []
    D_f.register_forward_pre_hook(lambda m, _: trainable_at_call.append(m.lin.weight.requires_grad))
    stats = Stage1Step(state, cfg, backward=phase.backward)(real_batch(cfg, 8))
    out, f, b = G.outputs[-1]
    refs = {"x_bar": out.image, "x_bar_f": out.fg, "x_bar_b": out.bg}
    calls = {label(c.x, refs): c for c in calls_of(log, "D_f", 1)}
    assert sorted(calls) == ["x_bar", "x_bar_f"] and calls["x_bar"].requires_grad
    assert trainable_at_call == [True, False], "D_f learns from x_f and only judges x_bar"
    assert D_f.lin.weight.requires_grad, "D_f trains again after the call"
    (call_b,) = calls_of(log, "D_b", 1)
    assert torch.equal(call_b.x, out.bg)
    f_idx, b_idx = f.argmax(1), b.argmax(1)
    assert_close(stats["loss/D_f_info"], F.cross_entropy(calls["x_bar_f"].out, f_idx))
    assert_close(stats["loss/composite_info"], F.cross_entropy(calls["x_bar"].out, f_idx))
    assert_close(stats["loss/D_b_info"], F.cross_entropy(call_b.out, b_idx))
    want = (stats["loss/G_adv"] + stats["loss/D_f_info"] + stats["loss/D_b_info"] + 0.7 * stats["loss/composite_info"]
            + cfg.stage1.beta * stats["loss/binary_entropy"] + cfg.stage1.mask_area_weight * stats["loss/mask_area_hinge"])
    assert_close(stats["loss/G_total"], want)
