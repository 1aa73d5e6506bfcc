import copy

import pytest
import torch

from comgan.ema import ema_decay_at, make_ema, update_ema
from comgan.export import recalibrate_batchnorm
from comgan.losses import binary_entropy, mask_area_hinge, mask_border_loss, mask_border_share
from comgan.metrics import centred_box_baseline, segmentation_scores
from comgan.training import Stage1State, Stage1Step, Stage2State, Stage2Step


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    after = module.state_dict()
    return {k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])}


def params(module):
    return {k for k, _ in module.named_parameters()}


def real_batch(cfg, n=8):
    r = cfg.model.resolution
    return torch.rand(n, 3, r, r) * 2 - 1


def test_stage1_step_changes_what_it_should(cfg):
    torch.manual_seed(0)
    state = Stage1State.create(cfg)
    before = {n: snapshot(getattr(state, n)) for n in ("G", "D_z", "D_f", "D_b", "G_ema")}
    Stage1Step(state, cfg)(real_batch(cfg))
    for name in ("G", "D_z", "D_f", "D_b"):  # every parameter of every trained network moved
        assert params(getattr(state, name)) <= changed(before[name], getattr(state, name)), name
        assert all(p.requires_grad for p in getattr(state, name).parameters()), "left trainable"
    assert changed(before["G_ema"], state.G_ema), "G_ema follows G"
    assert state.step == 1


def test_stage2_step_changes_only_s_and_dm(cfg):
    torch.manual_seed(0)
    s1 = Stage1State.create(cfg)
    gen = s1.G_ema
    gen_before = snapshot(gen)
    state = Stage2State.create(cfg)
    before_s, before_d = snapshot(state.S), snapshot(state.D_m)
    Stage2Step(state, cfg, generator=gen)(real_batch(cfg))
    assert params(state.S) <= changed(before_s, state.S)
    assert params(state.D_m) <= changed(before_d, state.D_m)
    assert not changed(gen_before, gen), "the frozen generator must not change in stage 2"


def stage1_step_stats(cfg, **stage1) -> dict:
    """The stats of one stage-1 step from fixed seeds, with the given stage1 settings."""
    for key, value in stage1.items():
        setattr(cfg.stage1, key, value)
    torch.manual_seed(0)
    state = Stage1State.create(cfg)
    torch.manual_seed(1)
    return Stage1Step(state, cfg)(real_batch(cfg))


def test_mask_gradient_norms_are_reported(cfg):
    """The gradient of L_G at the mask and at M's weights (the paper's Figure 4 gauge)."""
    st = stage1_step_stats(copy.deepcopy(cfg))
    assert st["grad/mask"] > 0 and st["grad/mask_net"] > 0


def test_beta_rises_linearly_over_its_warmup_steps():
    from comgan.training import warmed_beta
    assert [warmed_beta(2.0, step, 4) for step in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert warmed_beta(2.0, 0, 0) == 2.0


def test_beta_weights_binary_entropy(cfg):
    l0 = stage1_step_stats(cfg, beta=0.0)["loss/G_total"]
    st = stage1_step_stats(cfg, beta=10.0)
    torch.testing.assert_close(st["loss/G_total"] - l0, 10.0 * st["loss/binary_entropy"], rtol=1e-4, atol=1e-4)


def test_mask_area_hinge_weights_only_degenerate_masks(cfg):
    masks = torch.stack([torch.zeros(1, 8, 8), torch.full((1, 8, 8), 0.3), torch.ones(1, 8, 8)])
    assert mask_area_hinge(masks).item() == pytest.approx((0.05 + 0 + 0.05) / 3)
    assert mask_area_hinge(masks[1:2]).item() == 0  # any plausible area is free
    assert mask_area_hinge(masks[1:2], 0.2).item() == pytest.approx(0.1)  # a lower max bites
    assert mask_area_hinge(masks[1:2], 0.01).item() == pytest.approx(0.29)  # under the floor: held near empty
    assert mask_area_hinge(masks[0:1] + 0.01, 0.01).item() == pytest.approx(0, abs=1e-7)
    l0 = stage1_step_stats(cfg, mask_area_weight=0.0)["loss/G_total"]
    st = stage1_step_stats(cfg, mask_area_weight=100.0, mask_area_max=0.01)
    assert st["loss/mask_area_hinge"] > 0
    torch.testing.assert_close(st["loss/G_total"] - l0, 100.0 * st["loss/mask_area_hinge"], rtol=1e-4, atol=1e-4)


def test_the_study_variants_train_without_info_terms(cfg):
    """The study's variants (the `study` preset): G's loss is the adversarial and binary terms
    (the area and composite terms off too), and D_f / D_b get no update."""
    torch.manual_seed(0)
    study = copy.deepcopy(cfg)
    study.model.variant, study.stage1.mask_area_weight, study.stage1.composite_info_weight = "comgan", 0.0, 0.0
    state = Stage1State.create(study)
    before = {n: snapshot(getattr(state, n)) for n in ("D_f", "D_b")}
    st = Stage1Step(state, study)(real_batch(study))
    for name in ("D_f", "D_b"):  # their BatchNorm statistics follow the batches; their weights stay
        assert not params(getattr(state, name)) & changed(before[name], getattr(state, name)), name
    torch.testing.assert_close(st["loss/G_total"], st["loss/G_adv"] + study.stage1.beta * st["loss/binary_entropy"])
    assert "loss/D_f_info" not in st and "loss/D_b_info" not in st, "D_f and D_b do not run"


def test_mask_border_loss_is_orientation_free_and_weighted(cfg):
    """The ring's share by hand on 8x8 masks (ring 1/8: one pixel, 28 of the 64 pixels), then the
    step adds exactly weight x the term."""
    inside = torch.zeros(1, 8, 8)
    inside[:, 1:7, 1:7] = 1  # an object inside the frame: the ring is all background
    top = torch.zeros(1, 8, 8)
    top[:, :4] = 1  # the top half: the ring is split, 8 + 3 + 3 = 14 of its 28 pixels
    masks = torch.stack([inside, 1 - inside, top])
    torch.testing.assert_close(mask_border_share(masks, 0.125), torch.tensor([0.0, 1.0, 0.5]))
    assert mask_border_loss(masks[:2], 0.125).item() == 0  # either layer may own the frame
    assert mask_border_loss(masks, 0.125).item() == pytest.approx(0.5 / 3)
    assert mask_border_share(masks, 0.01).tolist() == [0.0, 1.0, 0.5]  # at least one pixel wide
    l0 = stage1_step_stats(cfg)["loss/G_total"]
    st = stage1_step_stats(cfg, mask_border_weight=50.0)
    assert st["loss/mask_border"] > 0
    torch.testing.assert_close(st["loss/G_total"] - l0, 50.0 * st["loss/mask_border"], rtol=1e-4, atol=1e-4)


def test_binary_entropy_of_saturated_bf16_masks_is_finite():
    """Under bf16 autocast masks arrive in bf16, where 1 - 1e-6 rounds to 1."""
    mask = torch.tensor([0.0, 1.0, 0.5, 1.0], dtype=torch.bfloat16)
    h = binary_entropy(mask)
    assert torch.isfinite(h) and h.dtype == torch.float32
    assert h.item() == pytest.approx(0.25, abs=1e-3)


def test_binary_entropy_values():
    assert binary_entropy(torch.full((4,), 0.5)).item() == pytest.approx(1.0, abs=1e-5)
    assert binary_entropy(torch.tensor([0.0, 1.0])).item() < 1e-4


def test_ema():
    net = torch.nn.Linear(3, 3)
    ema = make_ema(net)
    assert not any(p.requires_grad for p in ema.parameters())
    w0 = ema.weight.clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    update_ema(ema, net, 0.9)
    torch.testing.assert_close(ema.weight, w0 + 0.1)
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(10 ** 6, 0.999) == 0.999


def test_batchnorm_recalibration_matches_batch_statistics():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    data = torch.randn(256, 4) * 3 + 5
    recalibrate_batchnorm(net, [(data[:128],), (data[128:],)])  # chunks average to the whole
    bn = net[1]
    torch.testing.assert_close(bn.running_mean, net[0](data).mean(0).detach(), rtol=1e-4, atol=1e-4)
    assert not net.training and bn.momentum == 0.1


def test_segmentation_scores():
    gt = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    gt[:, :, :2] = True
    perfect = segmentation_scores(gt, gt)
    assert perfect["iou_strict"].tolist() == [1.0, 1.0]
    inverted = segmentation_scores(~gt, gt)
    assert inverted["iou_strict"].tolist() == [0.0, 0.0]
    assert inverted["iou_paper"].tolist() == [1.0, 1.0]  # the complement is perfect
    box = centred_box_baseline(gt, 0.25)
    assert box.sum().item() == 2 * 4


class DiscGenerator(torch.nn.Module):
    """Generates a centred disc mask, or its complement: enough to test the orientation rule
    (the exactness of the swap itself is tested on the real Generator in test_networks.py)."""

    def __init__(self, inverted: bool):
        super().__init__()
        self.inverted = inverted

    def forward(self, n):
        y, x = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
        disc = ((x ** 2 + y ** 2) < 0.4).float().expand(n, 1, 16, 16)
        return type("Out", (), {"mask": 1 - disc if self.inverted else disc})

    def swap_foreground_background_(self):
        self.inverted = not self.inverted


@pytest.mark.parametrize("inverted", [False, True])
def test_export_orients_mask_to_the_object(inverted):
    from comgan.export import orient_foreground
    from comgan.metrics import border_mean

    g = DiscGenerator(inverted)
    assert orient_foreground(g, [(4,), (2,)]) == inverted
    assert not g.inverted
    assert border_mean(g(4).mask).max() == 0


def test_stage_state_round_trips_through_state_dict(cfg):
    torch.manual_seed(0)
    a = Stage1State.create(cfg)
    Stage1Step(a, cfg)(real_batch(cfg))
    torch.manual_seed(1)
    b = Stage1State.create(cfg)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert b.step == 1
    for name in ("G", "D_z", "D_f", "D_b", "G_ema"):
        assert not changed(snapshot(getattr(a, name)), getattr(b, name)), name
    torch.manual_seed(2)
    real = real_batch(cfg)
    stats = []
    for state in (a, b):
        torch.manual_seed(3)  # the same codes for both
        stats.append(Stage1Step(state, cfg)(real))
    assert stats[0]["loss/G_total"] == stats[1]["loss/G_total"]
    for name in ("G", "D_z"):  # same update: the optimisers' moments were restored too
        assert not changed(snapshot(getattr(a, name)), getattr(b, name)), name


def test_previews_and_export_leave_the_training_random_stream_alone(cfg):
    """What is trained must not depend on run.image_every or on exporting: previews and export
    checks draw from their own generators."""
    from comgan.stages import STAGE1, STAGE2

    torch.manual_seed(0)
    s1 = Stage1State.create(cfg)
    s2 = Stage2State.create(cfg)
    real = real_batch(cfg)
    before = torch.get_rng_state()
    first = STAGE1.previews(s1, cfg, None, real)
    STAGE2.previews(s2, cfg, s1.G_ema, real)
    STAGE1.export(s1, cfg, chunk=4)
    assert torch.equal(torch.get_rng_state(), before)
    again = STAGE1.previews(s1, cfg, None, real)
    assert all(torch.equal(first[tag], again[tag]) for tag in first), "a preview shows the same codes every time"


