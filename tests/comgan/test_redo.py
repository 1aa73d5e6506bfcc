"""ReDO (comgan/redo.py): one region redrawn per image, the information term, where gradients go,
the paper's optimiser settings, the exported segmenter and the watchdog on it."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from cluster.config import load_config
from comgan import redo
from comgan.artifacts import from_bytes, load_segmenter, segmenter_artifact, to_bytes
from comgan.redo import REGIONS, ObjectMask, ReDOState, ReDOStep, export_segmenter, object_region, redraw
from comgan.watchdog import measure_segmenter, trivial_reason

TINY_REDO = ["model.resolution=16", "model.ngf=8", "model.seg_width=8", "model.dz_width=8", "model.info_width=8",
             "stage2.batch_size=8"]


@pytest.fixture
def cfg():
    return load_config("redo", TINY_REDO)


def photos(cfg, n=8):
    r = cfg.model.resolution
    return torch.rand(n, 3, r, r) * 2 - 1


class HalfMasks(nn.Module):
    """A mask network stand-in: region 0 is the left half of every image, region 1 the right."""

    def forward(self, x):
        left = torch.zeros_like(x[:, :1])
        left[..., : x.shape[-1] // 2] = 1
        return torch.cat([left, 1 - left], 1)


def test_one_region_per_image_is_redrawn_and_the_rest_is_the_photo(cfg):
    torch.manual_seed(0)
    state = ReDOState.create(cfg)
    real = photos(cfg)
    redrawn, region, z, masks = redraw(HalfMasks(), state.G, real, cfg.model.z_dim)
    assert torch.bincount(region, minlength=REGIONS).tolist() == [4, 4], "every region in equal numbers"
    half = cfg.model.resolution // 2
    for i, k in enumerate(region.tolist()):
        kept = slice(half, None) if k == 0 else slice(None, half)
        drawn = slice(None, half) if k == 0 else slice(half, None)
        assert torch.equal(redrawn[i, ..., kept], real[i, ..., kept]), "the other region is the photo's own pixels"
        assert not torch.allclose(redrawn[i, ..., drawn], real[i, ..., drawn]), "the chosen region is drawn anew"
    assert z.shape == (8, cfg.model.z_dim) and masks.shape == (8, REGIONS, 16, 16)


def test_each_image_is_drawn_by_its_own_regions_generator(cfg):
    torch.manual_seed(0)
    G = ReDOState.create(cfg).G.eval()
    mask, z = torch.rand(4, 1, 16, 16), torch.randn(4, cfg.model.z_dim)
    region = torch.tensor([0, 1, 1, 0])
    out = G(mask, z, region)
    for i, k in enumerate(region.tolist()):
        assert torch.allclose(out[i], G.regions[k](mask[i:i + 1], z[i:i + 1])[0], atol=1e-5)


def test_the_mask_network_outputs_a_soft_partition(cfg):
    masks = ReDOState.create(cfg).M(photos(cfg))
    assert masks.shape == (8, REGIONS, 16, 16)
    assert torch.allclose(masks.sum(1), torch.ones(8, 16, 16), atol=1e-5) and masks.min() >= 0


def test_spectral_norm_on_every_network_but_the_mask_network(cfg):
    state = ReDOState.create(cfg)

    def normalised(net):
        return [hasattr(m, "parametrizations") for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]

    assert not any(normalised(state.M))
    for name in ("G", "D", "Z"):
        assert all(normalised(getattr(state, name))), name


def test_the_papers_optimiser_settings(cfg):
    state = ReDOState.create(cfg)
    mask_group, others = state.opt_G.param_groups
    assert {id(p) for p in mask_group["params"]} == {id(p) for p in state.M.parameters()}
    assert {id(p) for p in others["params"]} == {id(p) for p in [*state.G.parameters(), *state.Z.parameters()]}
    assert mask_group["lr"] == pytest.approx(1e-5), "M learns at a tenth of the rate"
    assert mask_group["weight_decay"] == redo.MASK_WEIGHT_DECAY and others["weight_decay"] == 0
    for group in (mask_group, others, *state.opt_D.param_groups):
        assert group["betas"] == (0.0, 0.9)
    assert others["lr"] == state.opt_D.param_groups[0]["lr"] == cfg.stage2.lr == 1e-4


def test_the_information_term_reaches_the_mask_network_and_only_the_drawn_regions_head(cfg):
    torch.manual_seed(0)
    state = ReDOState.create(cfg)
    redrawn, region, z, _ = redraw(state.M, state.G, photos(cfg), cfg.model.z_dim)
    region = torch.zeros_like(region)  # read every image as region 0's: region 1's output gets nothing
    outputs = []
    state.Z.encoder.register_forward_hook(lambda module, args, out: outputs.append(out) or out.retain_grad())
    info = (state.Z(redrawn, region) - z).pow(2).mean()
    info.backward()
    per_region = outputs[0].grad.view(-1, REGIONS, cfg.model.z_dim)
    assert per_region[:, 0].abs().sum() > 0 and per_region[:, 1].abs().sum() == 0
    for name in ("M", "G"):  # z is recoverable only through what M lets G draw
        grads = [p.grad for p in getattr(state, name).parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0, name
    assert all(p.grad is None for p in state.D.parameters()), "D takes no part in the information term"


def test_a_step_updates_every_network_and_logs_the_mask_gradient(cfg):
    torch.manual_seed(0)
    state = ReDOState.create(cfg)
    before = {n: {k: v.clone() for k, v in getattr(state, n).state_dict().items()} for n in state.TRAINED}
    stats = ReDOStep(state, cfg)(photos(cfg))
    for name in state.TRAINED:
        after = getattr(state, name).state_dict()
        moved = {k for k in before[name] if before[name][k].is_floating_point() and not torch.equal(before[name][k], after[k])}
        weights = {k for k, _ in getattr(state, name).named_parameters()}
        assert weights <= moved, name
        assert all(p.requires_grad for p in getattr(state, name).parameters()), "left trainable"
    assert state.step == 1
    assert stats["grad/mask_net"] > 0
    assert {"loss/D", "loss/G_adv", "loss/info_z", "mask/min_region", "mask/binary_fraction"} <= set(stats)
    assert 0 <= stats["mask/min_region"] <= 0.5


def test_a_restored_state_takes_the_same_step(cfg):
    torch.manual_seed(0)
    state = ReDOState.create(cfg)
    ReDOStep(state, cfg)(photos(cfg))
    saved = from_bytes(to_bytes({"kind": "test", "state": state.state_dict()}))["state"]
    torch.manual_seed(1)
    other = ReDOState.create(cfg)
    other.load_state_dict(saved)
    batch = photos(cfg)
    torch.manual_seed(2)
    a = ReDOStep(state, cfg)(batch)
    torch.manual_seed(2)
    b = ReDOStep(other, cfg)(batch)
    assert other.step == state.step == 2
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(state.M.state_dict().values(), other.M.state_dict().values()))


def test_the_object_is_the_region_that_stays_off_the_frames_edge():
    inside = torch.zeros(4, 1, 32, 32)
    inside[..., 8:24, 8:24] = 1
    assert object_region(torch.cat([1 - inside, inside], 1)) == 1
    assert object_region(torch.cat([inside, 1 - inside], 1)) == 0
    # What ReDO's M did on the synthetic scenes: unsure (0.5) on the last two pixels all round,
    # where a ring that thin cannot tell the regions apart; the band around them still can.
    unsure = inside.clone()
    unsure[..., :2, :] = unsure[..., -2:, :] = unsure[..., :, :2] = unsure[..., :, -2:] = 0.5
    assert object_region(torch.cat([1 - unsure, unsure], 1)) == 1
    assert object_region(torch.cat([unsure, 1 - unsure], 1)) == 0


def test_the_exported_segmenter_is_the_object_region_and_survives_the_artifact(cfg):
    torch.manual_seed(0)
    state = ReDOState.create(cfg)
    real = photos(cfg)
    segmenter = export_segmenter(state.M, cfg.model, real, chunk=3)
    with torch.no_grad():
        expected = state.M.eval()(real)[:, int(segmenter.region)].unsqueeze(1)
        assert torch.allclose(segmenter(real), expected, atol=1e-6)
    net, saved = load_segmenter(from_bytes(to_bytes(segmenter_artifact(segmenter, cfg.model))))
    assert isinstance(net, ObjectMask) and saved.variant == "redo"
    assert int(net.region) == int(segmenter.region)
    with torch.no_grad():
        assert torch.allclose(net(real), expected, atol=1e-6)


class Constant(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full_like(x[:, :1], self.value)


def test_the_watchdog_finds_a_region_that_takes_the_whole_photo(cfg):
    real = photos(cfg, 16)
    empty = measure_segmenter(Constant(0.0), real, chunk=5)
    assert empty["watch/mask_empty"] == 1 and "watch/layer_gap" not in empty
    assert trivial_reason(empty).startswith("mask collapsed (empty)")
    halves = measure_segmenter(LeftHalf(), real)
    assert halves["watch/mask_degenerate"] == 0 and halves["watch/mask_binary"] == 1
    assert halves["watch/mask_mean"] == 0.5


class LeftHalf(HalfMasks):
    def forward(self, x):
        return super().forward(x)[:, :1]


def test_a_step_under_bf16_autocast_on_the_cpu(cfg):
    """What run.mixed_precision=bf16 does to every prepared network's forward: each region
    generator returns bf16 where M's masks are fp32."""
    torch.manual_seed(0)
    state = ReDOState.create(cfg)
    step = ReDOStep(state, cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stats = step(photos(cfg))
    assert all(torch.isfinite(v) for v in stats.values())


def test_watchdog_checks_and_exports_leave_trainings_random_stream_alone(cfg):
    state = ReDOState.create(cfg)
    torch.manual_seed(5)
    export_segmenter(state.M, cfg.model, photos(cfg), chunk=4)
    after_export = torch.rand(3)
    torch.manual_seed(5)
    photos(cfg)  # the photos themselves were drawn before: what matters is nothing else is
    assert torch.equal(after_export, torch.rand(3))
