"""The trivial-solution watchdog on generators whose layers are built to be healthy or degenerate
in one known way each, and on the real Generator with its mask head forced to zero."""
from __future__ import annotations

import pytest
import torch

from comgan.networks import Generator, GeneratorOutput
from comgan.watchdog import counts_toward_streak, health_score, measure, segmenter_reason, trivial_reason, watch_codes

RES = 16


class Layers(torch.nn.Module):
    """A 'generator' drawing a disc whose position follows z, a foreground colour per f and a
    background colour per b; the flags break one property each."""

    def __init__(self, empty_share=0.0, constant=False, same_layers=False, blank_category=None, full=False,
                 soft_share=0.0):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # measure() finds the device through it
        self.empty_share, self.constant, self.same_layers = empty_share, constant, same_layers
        self.soft_share = soft_share
        self.blank_category, self.full = blank_category, full

    def forward(self, z, f, b):
        n = z.shape[0]
        y, x = torch.meshgrid(torch.arange(RES), torch.arange(RES), indexing="ij")
        centre = torch.full((n, 2), RES / 2) if self.constant else RES / 2 + 3 * torch.tanh(z[:, :2])
        cy, cx = centre.unbind(1)
        mask = (((y - cy[:, None, None]) ** 2 + (x - cx[:, None, None]) ** 2) < 16).float()[:, None]
        empty = torch.sigmoid(z[:, 2] * 3) < self.empty_share  # a z-dependent share of the samples
        mask = torch.where(empty[:, None, None, None], torch.zeros_like(mask), mask)
        soft = torch.special.ndtr(z[:, 3] / 4) < self.soft_share  # z / 4 ~ N(0, 1): this share of samples
        mask = torch.where(soft[:, None, None, None], 0.3 * mask, mask)
        if self.full:
            mask = torch.ones_like(mask)
        palette = torch.linspace(-1, 1, f.shape[1])
        bg = (b @ palette)[:, None, None, None].expand(n, 3, RES, RES)
        fg = (f @ palette.flip(0))[:, None, None, None].expand(n, 3, RES, RES) * 0.5 + 0.4
        if self.same_layers:
            fg = bg
        if self.blank_category is not None:
            fg = torch.where((f.argmax(1) == self.blank_category)[:, None, None, None], bg, fg)
        return GeneratorOutput(mask * fg + (1 - mask) * bg, mask, fg, bg, bg)


@pytest.mark.parametrize("layers, words", [
    (Layers(), None),
    (Layers(empty_share=0.9), "mask collapsed (empty)"),
    (Layers(full=True), "mask collapsed (full)"),
    (Layers(constant=True), "constant mask"),
    (Layers(same_layers=True), "no decomposition"),
    (Layers(empty_share=0.3), "partial collapse"),
    (Layers(blank_category=1), "foreground category"),
    (Layers(soft_share=0.25), "faint masks"),
])
def test_each_trivial_solution_is_named(cfg, layers, words):
    stats = measure(layers, cfg.model, samples=64, chunk=16)
    reason = trivial_reason(stats)
    if words is None:
        assert reason is None, (reason, stats)
        assert health_score(stats) > 0.3, "a healthy split scores well above the trivial ones' 0"
    else:
        assert reason is not None and words in reason, (reason, stats)
        assert health_score(stats) == 0.0


def test_health_rewards_binary_varied_masks_and_present_categories():
    healthy = {"watch/mask_degenerate": 0.0, "watch/mask_empty": 0.0, "watch/mask_full": 0.0,
               "watch/mask_binary": 1.0, "watch/mask_diversity": 0.3, "watch/layer_gap": 0.5,
               "watch/fg_gap_min_ratio": 0.9, "watch/mask_soft": 0.0}
    assert health_score(healthy) == 1.0
    # Each measure lowers the score on its own: soft masks, less variety, a weak category, degenerate samples.
    assert health_score({**healthy, "watch/mask_binary": 0.5}) == pytest.approx(0.5)
    assert health_score({**healthy, "watch/mask_diversity": 0.075}) == pytest.approx(0.5)
    assert health_score({**healthy, "watch/fg_gap_min_ratio": 0.25}) == pytest.approx(0.5)
    assert health_score({**healthy, "watch/mask_degenerate": 0.1, "watch/mask_empty": 0.1}) == pytest.approx(0.9)
    assert health_score({**healthy, "watch/mask_soft": 0.05}) == pytest.approx(0.95)


def test_the_real_generator_with_its_mask_forced_to_zero_is_caught(cfg):
    torch.manual_seed(0)
    g = Generator(cfg.model)
    g.mask_net.register_forward_hook(lambda module, args, out: torch.zeros_like(out))
    stats = measure(g, cfg.model, samples=32, chunk=8)
    assert stats["watch/mask_empty"] == 1.0
    assert "mask collapsed (empty)" in trivial_reason(stats)


def test_measures_use_fixed_codes_any_chunk_and_leave_the_mode_alone(cfg):
    torch.manual_seed(0)
    g = Generator(cfg.model).train()
    first = measure(g, cfg.model, samples=24, chunk=8)
    assert g.training, "the generator is back in train mode"
    again = measure(g, cfg.model, samples=24, chunk=5)
    assert again == pytest.approx(first, rel=1e-5, abs=1e-6)
    n = cfg.model.num_categories
    assert {f"watch/fg_gap/{k}" for k in range(n)} <= set(first)
    z, f, b, f_idx = watch_codes(cfg.model, 2 * n)
    assert f_idx.tolist() == list(range(n)) * 2, "every foreground category equally often"


def test_the_soft_share_counts_faint_masks_only(cfg):
    crisp = measure(Layers(), cfg.model, samples=128, chunk=32)
    faint = measure(Layers(soft_share=0.25), cfg.model, samples=128, chunk=32)
    z = watch_codes(cfg.model, 128)[0]
    expected = (torch.special.ndtr(z[:, 3] / 4) < 0.25).float().mean().item()
    assert crisp["watch/mask_soft"] == 0.0
    assert faint["watch/mask_soft"] == pytest.approx(expected) and 0.15 < expected < 0.35
    # F and B swapped (the mask is the complement): the same samples count as faint.
    flipped = measure(Flipped(Layers(soft_share=0.25)), cfg.model, samples=128, chunk=32)
    assert flipped["watch/mask_soft"] == faint["watch/mask_soft"]


class Flipped(torch.nn.Module):
    """The same layers with F and B exchanged, as a run that draws the scene with its F branch."""

    def __init__(self, layers):
        super().__init__()
        self.layers = layers

    def forward(self, z, f, b):
        out = self.layers(z, f, b)
        return GeneratorOutput(out.image, 1 - out.mask, out.bg, out.fg, out.global_image)


def test_masks_still_soft_at_the_end_of_training_are_named_then_only():
    unsettled = {"watch/mask_degenerate": 0.0, "watch/mask_empty": 0.0, "watch/mask_full": 0.0,
                 "watch/mask_binary": 0.8, "watch/mask_diversity": 0.3, "watch/layer_gap": 0.2,
                 "watch/fg_gap_min_ratio": 0.9, "watch/mask_soft": 0.62}
    assert trivial_reason(unsettled) is None  # early in training every mask is soft
    assert "masks never settled: faint in 62%" in trivial_reason(unsettled, final=True)
    assert trivial_reason({**unsettled, "watch/mask_soft": 0.09}, final=True) is None


def test_a_diverged_generator_is_named():
    healthy = {"watch/mask_degenerate": 0.0, "watch/mask_empty": 0.0, "watch/mask_full": 0.0,
               "watch/mask_binary": 1.0, "watch/mask_diversity": 0.3, "watch/layer_gap": 0.5,
               "watch/fg_gap_min_ratio": 0.9, "watch/mask_soft": 0.0}
    assert trivial_reason(healthy) is None
    assert trivial_reason({**healthy, "watch/layer_gap": float("nan")}).startswith("diverged")
    assert health_score({**healthy, "watch/mask_diversity": float("nan")}) == 0.0


def streaks(soft_shares: list[float], **measures) -> list[int]:
    """The worker's streak of trivial checks over a run whose checks measured these faint shares."""
    base = {"watch/mask_degenerate": 0.0, "watch/mask_empty": 0.0, "watch/mask_full": 0.0,
            "watch/mask_binary": 0.8, "watch/mask_diversity": 0.3, "watch/layer_gap": 0.2,
            "watch/fg_gap_min_ratio": 0.9, **measures}
    out, previous, streak = [], None, 0
    for i, soft in enumerate(soft_shares):
        stats = {**base, "watch/mask_soft": soft}
        reason = trivial_reason(stats, final=i == len(soft_shares) - 1)
        streak = streak + 1 if counts_toward_streak(reason, stats, previous) else 0
        out.append(streak)
        previous = stats
    return out


def test_faint_masks_that_keep_settling_do_not_make_a_streak():
    # A healthy horse run, checks every 250 steps (measured): two faint-mask findings in a row,
    # each with far fewer faint masks than the check before.
    assert streaks([1.0, 0.996, 0.656, 0.488, 0.266, 0.062, 0.148, 0.027]) == [0, 0, 0, 0, 0, 0, 0, 0]
    # The default job's seed 0, an object style lost (measured shares at steps 500-800): a streak.
    assert streaks([0.6, 0.23, 0.28, 0.25]) == [0, 0, 1, 2]
    # Masks that stay faint to the end, falling slowly: named at the last check.
    assert streaks([1.0, 0.9, 0.8, 0.7])[-1] == 1
    # Collapsed masks are no settling, whatever the faint share does.
    assert streaks([0.4, 0.2, 0.1], **{"watch/mask_degenerate": 0.9, "watch/mask_full": 0.9}) == [1, 2, 3]


@pytest.mark.parametrize("real, generated, words", [
    (0.017, 0.25, "shrank towards nothing"),   # the horses at stage2.self_train.weight=2
    (0.6, 0.25, None),                          # larger objects in the photos: not a factor of four
    (0.95, 0.25, "grew over the whole image"),  # the background share fell from 75 % to 5 %
    (0.99, 0.80, "grew over the whole image"),
    (0.0, 0.0, None),                           # nothing generated, nothing seen: no drift
    (float("nan"), 0.25, "diverged"),
])
def test_the_segmenter_drifting_from_its_generator_on_real_images_is_named(real, generated, words):
    reason = segmenter_reason(real, generated)
    assert (reason is None) if words is None else (words in reason)
    for healthy in ((0.27, 0.28), (0.25, 0.246), (0.07, 0.25)):
        assert segmenter_reason(*healthy) is None
