"""An artifact may come from any URL: its saved model section is checked with a config's ranges,
and the networks it asks for are bounded, before anything is built."""
from __future__ import annotations

import resource
import time
from dataclasses import asdict

import pytest

from comgan.artifacts import (ArtifactError, from_bytes, load_generator, load_segmenter, segmenter_artifact,
                              to_bytes)
from comgan.config import ModelConfig
from comgan.networks import UNet

LOADERS = {"comgan.generator": load_generator, "comgan.segmenter": load_segmenter}


def forged(kind: str, **model) -> dict:
    """A small file that claims a model section but carries no weights for it."""
    return {"kind": kind, "format": 1, "model": {**asdict(ModelConfig()), **model}, "state_dict": {}}


@pytest.mark.parametrize("kind, model, words", [
    ("comgan.segmenter", {"seg_width": 200000}, ["model.seg_width=200000", "parameters; an artifact may have at most"]),
    ("comgan.segmenter", {"seg_width": -3}, ["model.seg_width must be >= 1, got -3"]),
    # A segmenter does not build G, so a G wide enough for its resolution costs it nothing.
    ("comgan.segmenter", {"resolution": 2 ** 20, "ngf": 2 ** 17}, ["model.resolution must be a power of two from 16 to 2048, got 1048576"]),
    ("comgan.segmenter", {"seg_width": "wide"}, ["model.seg_width must be an integer"]),
    ("comgan.generator", {"z_dim": float("nan")}, ["model.z_dim must be an integer, got nan"]),
    ("comgan.generator", {"ngf": 2 ** 40}, ["model.ngf=1099511627776", "more than int64 can count"]),
    ("comgan.generator", {"z_dim": 10 ** 9}, ["model.z_dim=1000000000", "parameters"]),
])
def test_a_forged_model_section_fails_fast_in_one_line(tmp_path, kind, model, words):
    path = tmp_path / "artifact.pt"
    path.write_bytes(to_bytes(forged(kind, **model)))
    assert path.stat().st_size < 4096
    peak, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    with pytest.raises(ArtifactError) as e:
        LOADERS[kind](from_bytes(path.read_bytes(), what=str(path)), what=str(path))
    assert time.perf_counter() - start < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100_000, "KiB: nothing big was allocated"
    message = str(e.value)
    assert message.startswith(str(path)) and "\n" not in message
    for word in words:
        assert word in message


def test_missing_sections_and_weights_of_another_model_are_one_line_errors():
    model = ModelConfig(resolution=16, seg_width=4, seg_depth=2)
    other = segmenter_artifact(UNet(8, 2), model)  # weights of seg_width=8 under a model that says 4
    cases = [({"kind": "comgan.segmenter"}, "s.pt has no model section"),
             ({**forged("comgan.segmenter", **asdict(model)), "state_dict": None}, "s.pt has no weights"),
             (other, "s.pt: its weights do not fit its model section (size mismatch for")]
    for obj, message in cases:
        with pytest.raises(ArtifactError) as e:
            load_segmenter(obj, what="s.pt")
        assert message in str(e.value) and "\n" not in str(e.value)


def test_a_sound_artifact_still_loads():
    model = ModelConfig(resolution=16, seg_width=4, seg_depth=2)
    net, saved = load_segmenter(from_bytes(to_bytes(segmenter_artifact(UNet(4, 2), model))))
    assert saved == model and not net.training


def test_an_artifact_written_with_keys_retired_since_still_loads():
    """Artifacts save their whole model section: keys removed from it since are ignored."""
    model = ModelConfig(resolution=16, seg_width=4, seg_depth=2)
    old = segmenter_artifact(UNet(4, 2), model)
    old["model"].update(z_scale=4.0, dm_width=32, dz_aux_logits=20)
    _, saved = load_segmenter(from_bytes(to_bytes(old)))
    assert saved == model


@pytest.mark.parametrize("variant", ["ds-comgan", "pi1", "pi2"])
def test_a_generator_of_any_variant_comes_back_from_its_artifact_swapped_or_not(variant):
    """The artifact's model section names the variant, so loading builds the same generator, with
    its layers swapped as they were exported."""
    import torch
    from comgan.artifacts import generator_artifact
    from comgan.networks import Generator, sample_codes

    model = ModelConfig(resolution=16, ngf=8, subnet_width=8, num_categories=3, variant=variant)
    g = Generator(model).eval()
    g.swap_foreground_background_()
    loaded, saved = load_generator(from_bytes(to_bytes(generator_artifact(g, model))))
    assert saved.variant == variant
    z, f, b, _, _ = sample_codes(3, model)
    torch.testing.assert_close(loaded(z, f, b).mask, g(z, f, b).mask)
    torch.testing.assert_close(loaded(z, f, b).image, g(z, f, b).image)
