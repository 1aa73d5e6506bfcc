"""DiffAugment: per-image random transforms, identical on aligned batches, differentiable."""
from __future__ import annotations

import pytest
import torch

from comgan.augment import cutout_mask, diff_augment, parse_policy
from comgan.training import Stage1State, Stage1Step


def test_the_same_transform_applies_to_a_batch_pair_and_differs_per_image():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    a, b = diff_augment(x, x.clone(), policy="color,translation,cutout")
    assert torch.equal(a, b), "aligned batches get one transform"
    assert not torch.allclose(a, x), "something happened"
    one = diff_augment(torch.stack([x[0]] * 6), policy="translation,cutout")
    assert len({tuple(img.flatten().tolist()) for img in one}) > 1, "each image draws its own transform"


def test_a_mask_follows_its_image_geometrically_but_keeps_its_values():
    torch.manual_seed(0)
    image = torch.zeros(4, 3, 16, 16)
    image[:, :, 4:12, 4:12] = 1
    mask = (image[:, :1] > 0).float()
    aug_image, aug_mask = diff_augment(image, mask, policy="color,translation")
    assert set(aug_mask.unique().tolist()) <= {0.0, 1.0}, "colour leaves 1-channel masks alone"
    moved, moved_mask = diff_augment(image, mask, policy="translation")
    assert torch.equal((moved[:, :1] > 0).float(), moved_mask), "the mask moves with its image"


def test_gradients_flow_through_every_policy():
    for policy in ("color", "translation", "cutout", "color,translation,cutout"):
        x = torch.rand(3, 3, 8, 8, requires_grad=True)
        diff_augment(x, policy=policy).square().sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, policy


def test_translation_moves_content_by_at_most_an_eighth_and_fills_with_zeros():
    torch.manual_seed(1)
    x = torch.ones(64, 1, 16, 16)
    out = diff_augment(x, policy="translation")
    zero_rows = (out[:, 0].sum(2) == 0).sum(1)
    assert zero_rows.max() <= 2 and (zero_rows > 0).any(), "shifts of 0..2 px at 16 px"


def test_cutout_erases_a_square_of_half_the_side_at_most():
    torch.manual_seed(2)
    keep = cutout_mask(32, 16, 16, "cpu", torch.float32)
    erased = (keep == 0).sum(dim=(1, 2, 3))
    assert erased.max() == 64 and erased.min() > 0, "8x8 when inside, clipped at the border"


def test_empty_policy_is_the_identity_and_draws_nothing():
    x = torch.rand(2, 3, 8, 8)
    before = torch.get_rng_state()
    assert diff_augment(x, policy="") is x
    assert torch.equal(torch.get_rng_state(), before)


def test_unknown_policies_are_named():
    with pytest.raises(ValueError, match="unknown augmentation flip"):
        parse_policy("color,flip")


def test_stage1_step_shows_d_z_augmented_images(cfg):
    """With augment on, D_z never sees the real batch as given."""
    seen = []
    torch.manual_seed(0)
    cfg.stage1.augment = "translation,cutout"
    state = Stage1State.create(cfg)
    state.D_z.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    real = torch.rand(8, 3, 16, 16) * 2 - 1
    Stage1Step(state, cfg)(real)
    assert len(seen) == 5, "real, x_bar, x_bar_z in phase Dz; x_bar, x_bar_z in phase Gmain"
    assert not torch.equal(seen[0], real) and (seen[0] == 0).any(), "the real batch is augmented"


