"""comgan.refine: each image's colours correct its mask where the mask is unsure."""
import torch

from comgan.refine import colour_refined


def two_colour_scene():
    """One image: a red left half (the object) and a blue right half; the mask is confident on
    most of each half and wrong-but-unsure on one pixel of each."""
    image = torch.full((1, 3, 4, 8), -1.0)
    image[0, 0, :, :4] = 1.0   # red
    image[0, 2, :, 4:] = 1.0   # blue
    probs = torch.full((1, 1, 4, 8), 0.1)
    probs[..., :4] = 0.9
    probs[0, 0, 0, 0] = 0.4    # red, unsure, below 1/2
    probs[0, 0, 3, 7] = 0.6    # blue, unsure, above 1/2
    return image, probs


def test_unsure_pixels_follow_their_colour():
    image, probs = two_colour_scene()
    refined = colour_refined(image, probs, bins=4, confidence=0.8)
    assert refined.shape == probs.shape and refined.dtype == probs.dtype
    assert refined[0, 0, 0, 0] > 0.5 and refined[0, 0, 3, 7] < 0.5
    assert ((refined > 0.5) == (torch.arange(8) < 4).expand(4, 8)).all()


def test_images_of_a_batch_keep_their_own_colour_models():
    """The same colours mean the object in one image and the background in the other."""
    image, probs = two_colour_scene()
    swapped = 1 - probs
    refined = colour_refined(torch.cat([image, image]), torch.cat([probs, swapped]), bins=4, confidence=0.8)
    assert refined[0, 0, 0, 0] > 0.5 and refined[1, 0, 0, 0] < 0.5


def test_without_confident_pixels_the_mask_is_unchanged():
    """No histogram evidence: every colour's share is 1/2 and the odds are left as they are."""
    image, _ = two_colour_scene()
    probs = torch.rand(1, 1, 4, 8) * 0.2 + 0.4
    torch.testing.assert_close(colour_refined(image, probs, bins=4, confidence=0.8), probs)
