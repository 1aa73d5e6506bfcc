"""FID and IS: the mathematics against closed forms, and the whole path (generator artifact, real
shards, a TorchScript detector with the interface of StyleGAN's inception-2015-12-05.pt) on tiny
inputs, with the one-line errors for a missing or wrong detector file."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cluster.config import load_config
from cluster.fidelity import DETECTOR_FILE, DetectorError, fidelity, load_detector
from comgan.artifacts import generator_artifact, to_bytes
from comgan.metrics import feature_statistics, frechet_distance, inception_score
from comgan.networks import Generator
from data_shards.writer import write_shards
from tests.helpers import exit_code, one_line_error


def test_frechet_distance_matches_the_closed_form_for_diagonal_covariances():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    v1, v2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([4.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2 * (v1 * v2).sqrt()).sum()  # 5 + (1 + 1 + 0)
    got = frechet_distance(mu1.double(), torch.diag(v1).double(), mu2.double(), torch.diag(v2).double())
    assert got == pytest.approx(float(expected), abs=1e-9) and got == pytest.approx(7.0)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    same = frechet_distance(*feature_statistics(x), *feature_statistics(x))
    assert abs(same) < 1e-6
    shifted = frechet_distance(*feature_statistics(x + 3), *feature_statistics(x))
    assert shifted == pytest.approx(8 * 9, rel=1e-6), "a pure shift by 3 in 8 dimensions costs 8 * 3^2"


def test_inception_score_of_uniform_and_of_confident_balanced_predictions():
    k = 5
    assert inception_score(torch.full((100, k), 1 / k), splits=4) == pytest.approx((1.0, 0.0))
    confident = F.one_hot(torch.arange(100) % k, k).float()
    mean, std = inception_score(confident, splits=4)
    assert mean == pytest.approx(k, rel=1e-6) and std == pytest.approx(0, abs=1e-6)


class TinyDetector(torch.nn.Module):
    """The call interface of inception-2015-12-05.pt on a few random weights."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.fc = torch.nn.Linear(6, 10)

    def forward(self, img: torch.Tensor, return_features: bool = False, no_output_bias: bool = False) -> torch.Tensor:
        assert img.dtype == torch.uint8
        x = F.interpolate(img.float() / 127.5 - 1, size=(32, 32), mode="bilinear", align_corners=False)
        features = torch.relu(self.conv(x)).mean((2, 3))
        if return_features:
            return features
        logits = F.linear(features, self.fc.weight) if no_output_bias else self.fc(features)
        return logits.softmax(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    torch.jit.script(TinyDetector()).save(str(root / DETECTOR_FILE))
    model = load_config("tiny").model
    torch.manual_seed(1)
    (root / "generator.pt").write_bytes(to_bytes(generator_artifact(Generator(model), model)))
    rng = np.random.default_rng(0)
    write_shards(({"key": f"{i:03d}", "image": rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)} for i in range(20)),
                 str(root / "real"), progress=False)
    return root


def test_fidelity_of_a_generator_against_real_shards_is_finite_and_reproducible(setup):
    args = (str(setup / "generator.pt"), str(setup / "real"), str(setup / DETECTOR_FILE))
    first = fidelity(*args, num_generated=24, num_real=20, batch=7, splits=3)
    assert first["num_generated"] == 24 and first["num_real"] == 20 and first["resolution"] == 16
    assert math.isfinite(first["fid"]) and first["fid"] > 0
    assert 1 <= first["is_mean"] <= 10
    again = fidelity(*args, num_generated=24, num_real=20, batch=5, splits=3)
    assert again["fid"] == pytest.approx(first["fid"], rel=1e-6), "same seed, same images, any batch size"
    fewer = fidelity(*args, num_generated=24, num_real=10, batch=7, splits=3)
    assert fewer["num_real"] == 10 and fewer["fid"] != pytest.approx(first["fid"])


def test_a_missing_detector_file_names_the_file_needed(tmp_path):
    with pytest.raises(DetectorError) as e:
        load_detector(str(tmp_path / "nowhere.pt"))
    message = str(e.value)
    assert "\n" not in message and DETECTOR_FILE in message and str(tmp_path / "nowhere.pt") in message


def test_a_file_that_is_not_torchscript_is_refused_in_one_line(tmp_path):
    (tmp_path / "inception.pt").write_bytes(b"not a zip archive")
    with pytest.raises(DetectorError, match="is not a TorchScript detector") as e:
        load_detector(str(tmp_path / "inception.pt"))
    assert "\n" not in str(e.value)


def evaluate_job(*args) -> int:
    from jobs.evaluate import main

    return exit_code(main, *args)


def test_evaluate_job_writes_fid_and_is(setup, tmp_path, capsys):
    out = tmp_path / "fid.json"
    code = evaluate_job("--generator", setup / "generator.pt", "--data", setup / "real", "--inception",
                        setup / DETECTOR_FILE, "--fid-samples", 16, "--fid-real", 12, "--batch", 8, "--out", out)
    assert code == 0, capsys.readouterr().err
    assert "FID" in capsys.readouterr().out
    import json
    f = json.loads(out.read_text())["fidelity"]
    assert f["num_generated"] == 16 and f["num_real"] == 12 and math.isfinite(f["fid"])


@pytest.mark.parametrize("args, words", [
    (["--inception", "{root}/missing.pt"], ["missing.pt", DETECTOR_FILE]),
    ([], ["--inception"]),
])
def test_evaluate_job_missing_detector_is_one_line(setup, capsys, args, words):
    args = [a.format(root=setup) for a in args]
    code = evaluate_job("--generator", setup / "generator.pt", "--data", setup / "real", *args)
    one_line_error(code, capsys.readouterr().err, *words)
