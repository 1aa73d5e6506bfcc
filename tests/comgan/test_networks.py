import pytest
import torch

from cluster.config import load_config
from comgan.networks import (build_stage1_networks, build_stage2_networks, count_parameters,
                             sample_codes)


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_shapes(preset):
    cfg = load_config(preset).model
    nets = build_stage1_networks(cfg)
    r, n = cfg.resolution, cfg.num_categories
    z, f, b, f_idx, _ = sample_codes(4, cfg)
    assert z.shape == (4, cfg.z_dim) and f.shape == (4, n) and f.sum(1).eq(1).all()
    out = nets["G"](z, f, b)
    for t in (out.image, out.fg, out.bg, out.global_image):
        assert t.shape == (4, 3, r, r)
        assert t.min() >= -1 and t.max() <= 1
    assert out.mask.shape == (4, 1, r, r) and out.mask.min() >= 0 and out.mask.max() <= 1
    torch.testing.assert_close(out.image, out.mask * out.fg + (1 - out.mask) * out.bg)
    assert nets["D_z"](out.image).shape == (4,)
    assert nets["D_f"](out.fg).shape == (4, n)
    seg = build_stage2_networks(cfg)
    assert seg["S"](out.image).shape == (4, 1, r, r)
    assert seg["D_m"](out.mask).shape == (4,)


def test_paper_parameter_counts():
    """The authors' code measured at N = 200: G 8.56 M, D_z 3.01 M (within 1 %), of which 0.67 M
    are a code head that no loss uses and that is left out here: 2.33 M."""
    cfg = load_config("paper").model
    nets = build_stage1_networks(cfg)
    assert abs(count_parameters(nets["G"]) / 8.56e6 - 1) < 0.01
    assert count_parameters(nets["D_z"]) == 2_334_081
    assert cfg.resolution == 128 and cfg.ngf == 64 and cfg.num_categories == 200


def test_default_generator_size_matches_calibration():
    # 128 channels at 4x4 halving to 16 at 32 px, subnets 16 wide: about 0.8 M parameters.
    cfg = load_config("default").model
    g = build_stage1_networks(cfg)["G"]
    assert g.phi_net.c0 == 128 and g.phi_net.out_channels == 16
    assert 0.7e6 < count_parameters(g) < 0.9e6


def test_mask_gets_gradient_through_composite():
    cfg = load_config("tiny").model
    g = build_stage1_networks(cfg)["G"]
    z, f, b, _, _ = sample_codes(4, cfg)
    g(z, f, b).image.square().mean().backward()
    grads = [p.grad for p in g.mask_net.parameters()]
    assert all(gr is not None for gr in grads)
    assert sum(gr.abs().sum().item() for gr in grads) > 0


def test_swapping_foreground_and_background_is_exact():
    cfg = load_config("tiny").model
    g = build_stage1_networks(cfg)["G"].eval()
    z, f, b, _, _ = sample_codes(4, cfg)
    before = g(z, f, b)
    g.swap_foreground_background_()
    after = g(z, b, f)  # the old background code now drives the new foreground branch
    torch.testing.assert_close(after.mask, 1 - before.mask)
    torch.testing.assert_close(after.fg, before.bg)
    torch.testing.assert_close(after.bg, before.fg)
    torch.testing.assert_close(after.image, before.image)


# Which part of the generator reads which features, per variant: (mask, fg, bg) -> the module whose
# features it reads. The gradient of each output alone must reach exactly the features named.
READS = {
    "ds-comgan": {"mask": "phi_net", "fg": "phi_net", "bg": "phi_net"},
    "comgan": {"mask": "phi_net", "fg": "phi_net", "bg": "phi_net"},
    "pi1": {"mask": "phi_net", "fg": "phi_net", "bg": "bg_features"},
    "pi2": {"mask": "mask_features", "fg": "phi_net", "bg": "bg_features"},
}


def reached(g, output: str, z, f, b) -> set[str]:
    """The feature generators that the gradient of one output of G reaches."""
    g.zero_grad(set_to_none=True)
    getattr(g(z, f, b), output).square().mean().backward()
    sources = {"phi_net": g.phi_net, "bg_features": g.bg_features, "mask_features": g.mask_features}
    return {name for name, m in sources.items()
            if m is not None and any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())}


@pytest.mark.parametrize("variant", sorted(READS))
def test_each_variant_shares_phi_where_the_paper_says(variant):
    cfg = load_config("tiny", [f"model.variant={variant}"]).model
    g = build_stage1_networks(cfg)["G"]
    z, f, b, _, _ = sample_codes(4, cfg)
    for output, source in READS[variant].items():
        assert reached(g, output, z, f, b) == {source}, (variant, output)
    # The mask network gets a gradient through the composite in every variant (Figure 4's gauge).
    g.zero_grad(set_to_none=True)
    g(z, f, b).image.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.mask_net.to_out.parameters())


@pytest.mark.parametrize("variant", ["pi1", "pi2"])
def test_swapping_the_layers_of_a_study_variant_is_exact_and_saved(variant):
    cfg = load_config("tiny", [f"model.variant={variant}"]).model
    g = build_stage1_networks(cfg)["G"].eval()
    z, f, b, _, _ = sample_codes(4, cfg)
    before = g(z, f, b)
    g.swap_foreground_background_()
    after = g(z, b, f)  # as in ComGAN: the old background code drives the new foreground
    torch.testing.assert_close(after.mask, 1 - before.mask)
    torch.testing.assert_close(after.fg, before.bg)
    torch.testing.assert_close(after.bg, before.fg)
    torch.testing.assert_close(after.image, before.image)
    loaded = build_stage1_networks(cfg)["G"].eval()
    loaded.load_state_dict(g.state_dict())  # how an exported generator comes back
    torch.testing.assert_close(loaded(z, b, f).mask, after.mask)
