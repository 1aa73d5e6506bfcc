"""jobs/generate.py, the controllable-generation grids (paper Figs. 5-7), on a tiny untrained
generator: grid sizes, bit-for-bit reproducibility from --seed alone, that each grid varies only
its own code (tiles checked against the generator run on independently regenerated codes),
refusing existing output, one-line errors, TensorBoard and S3."""
from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cluster.config import load_config
from comgan.artifacts import generator_artifact, segmenter_artifact, to_bytes
from comgan.controls import generate
from comgan.networks import Z_SCALE, Generator, UNet, sample_codes
from data_shards.io import read_bytes, write_bytes
from tests.helpers import exit_code, one_line_error

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("jobs_generate", ROOT / "jobs" / "generate.py")
generate_job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate_job)

NAMES = ("vary_f.png", "vary_b.png", "vary_z.png")
RES, N = 16, 3          # the tiny preset
SCALE, PAD, GAP = 4, 2, 6  # 16 px is enlarged 4x (to 64 px); 2 px between tiles, 6 more between groups


@pytest.fixture(scope="module")
def model():
    m = load_config("tiny").model
    assert (m.resolution, m.num_categories) == (RES, N)
    return m


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory, model):
    """An untrained tiny generator.pt (eval-mode BatchNorm statistics are the initial ones)."""
    torch.manual_seed(0)
    g = Generator(model)
    path = tmp_path_factory.mktemp("artifact") / "generator.pt"
    path.write_bytes(to_bytes(generator_artifact(g, model, {"step": 7})))
    return path


def main(*args) -> int:
    return exit_code(generate_job.main, *args)


def png(path) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(Path(path).read_bytes())).convert("RGB"))


def tile(img: np.ndarray, group: int, row: int, col: int, size: int = RES * SCALE) -> np.ndarray:
    """Tile (group, row, column) of a grid; rows 0..3 = composite, foreground, background, mask."""
    top = group * (4 * (size + PAD) + PAD + GAP) + PAD + row * (size + PAD)
    left = PAD + col * (size + PAD)
    return img[top:top + size, left:left + size]


def grid_shape(groups: int, cols: int, size: int = RES * SCALE) -> tuple[int, int, int]:
    return groups * (4 * (size + PAD) + PAD) + (groups - 1) * GAP, cols * (size + PAD) + PAD, 3


def test_help_explains_the_grids_and_options(capsys):
    assert main("--help") == 0
    out = capsys.readouterr().out
    for word in ("vary_f.png", "vary_b.png", "vary_z.png", "composite", "foreground", "background", "mask",
                 "--generator", "--out", "--seed", "--count", "--groups", "--categories", "--scale", "--batch",
                 "--tensorboard", "--overwrite", "s3://", "bit for bit"):
        assert word in out, word


def test_three_grids_of_the_expected_size(generator_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main("--generator", generator_file, "--out", out, "--count", 5, "--groups", 2) == 0
    printed = capsys.readouterr().out
    # N = 3 < --count: vary_f and vary_b show all 3 categories; vary_z shows 5 noise vectors
    for name, cols in (("vary_f.png", 3), ("vary_b.png", 3), ("vary_z.png", 5)):
        assert png(out / name).shape == grid_shape(2, cols), name
        assert f"wrote {out / name}" in printed
    assert main("--generator", generator_file, "--out", tmp_path / "small", "--scale", 1, "--groups", 1) == 0
    assert png(tmp_path / "small" / "vary_z.png").shape == grid_shape(1, 8, size=RES)
    assert png(tmp_path / "small" / "vary_f.png").shape == grid_shape(1, 3, size=RES)


def test_a_seed_gives_the_same_bytes_whatever_the_global_random_state(generator_file, tmp_path):
    torch.manual_seed(1)
    assert main("--generator", generator_file, "--out", tmp_path / "a", "--seed", 3) == 0
    torch.manual_seed(2)
    assert main("--generator", generator_file, "--out", tmp_path / "b", "--seed", 3) == 0
    assert main("--generator", generator_file, "--out", tmp_path / "c", "--seed", 4) == 0
    for name in NAMES:
        a, b, c = ((tmp_path / d / name).read_bytes() for d in "abc")
        assert a == b, f"{name}: same seed, different bytes"
        assert a != c, f"{name}: another seed, same bytes"


def test_codes_leave_the_global_random_stream_alone(model):
    from comgan.controls import control_codes

    torch.manual_seed(123)
    before = torch.get_rng_state()
    for vary in ("f", "b", "z"):
        control_codes(model, vary, groups=2, count=4, seed=9)
    assert torch.equal(torch.get_rng_state(), before), "codes drawn from (or seeding) the global RNG"


def test_the_command_line_gives_the_same_bytes_in_a_fresh_process(generator_file, tmp_path):
    assert main("--generator", generator_file, "--out", tmp_path / "here", "--seed", 5) == 0
    p = subprocess.run([sys.executable, str(ROOT / "jobs" / "generate.py"), "--generator", str(generator_file),
                        "--out", str(tmp_path / "there"), "--seed", "5", "--device", "cpu"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    for name in NAMES:
        assert (tmp_path / "here" / name).read_bytes() == (tmp_path / "there" / name).read_bytes(), name


def expected_tiles(g: Generator, z, f, b) -> list[np.ndarray]:
    """The four tiles of one code (composite, foreground, background, mask), computed here."""
    with torch.no_grad():
        out = g.eval()(z[None], f[None], b[None])
    tiles = []
    for x in ((out.image + 1) / 2, (out.fg + 1) / 2, (out.bg + 1) / 2, out.mask.repeat(1, 3, 1, 1)):
        x = x[0].permute(1, 2, 0).clamp(0, 1).numpy()
        tiles.append(np.kron((x * 255).round(), np.ones((SCALE, SCALE, 1))))
    return tiles


@pytest.mark.parametrize("vary", ["f", "b", "z"])
def test_each_column_is_its_codes_with_only_the_varied_code_changed(generator_file, model, tmp_path, vary):
    seed, groups, count = 11, 2, 4
    out = tmp_path / "out"
    assert main("--generator", generator_file, "--out", out, "--seed", seed, "--groups", groups, "--count", count) == 0
    img = png(out / f"vary_{vary}.png").astype(np.int16)
    # The codes, regenerated here: the fixed (z, f, b) of each group first, then the z columns.
    rng = torch.Generator().manual_seed(seed)
    z0, f0, b0, _, _ = sample_codes(groups, model, generator=rng)
    z_cols = torch.randn(groups, count, model.z_dim, generator=rng) * Z_SCALE
    g = Generator(model)
    g.load_state_dict(torch.load(generator_file, weights_only=True)["state_dict"])
    cols = N if vary != "z" else count
    for gi in range(groups):
        for c in range(cols):
            z, f, b = z0[gi], f0[gi], b0[gi]
            if vary == "z":
                z = z_cols[gi, c]
            elif vary == "f":
                f = F.one_hot(torch.tensor(c), N).float()
            else:
                b = F.one_hot(torch.tensor(c), N).float()
            for row, want in enumerate(expected_tiles(g, z, f, b)):
                got = tile(img, gi, row, c)
                assert np.abs(got - want).max() <= 1, (vary, gi, row, c)  # 1: float rounding across batch sizes
    # What stays fixed is visible: B(phi(z), b) ignores f and M(phi(z)) ignores f and b.
    same = {"f": (2, 3), "b": (1, 3), "z": ()}[vary]
    for gi in range(groups):
        for row in range(4):
            tiles = [tile(img, gi, row, c) for c in range(cols)]
            if row in same:
                assert all(np.array_equal(tiles[0], t) for t in tiles[1:]), (vary, gi, row)
            else:
                assert not any(np.array_equal(tiles[0], t) for t in tiles[1:]), (vary, gi, row)


def test_categories_choose_the_columns(generator_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main("--generator", generator_file, "--out", out, "--categories", "2,0", "--groups", 1) == 0
    assert main("--generator", generator_file, "--out", tmp_path / "all", "--groups", 1) == 0
    picked, default = png(out / "vary_f.png"), png(tmp_path / "all" / "vary_f.png")
    assert picked.shape == grid_shape(1, 2)
    for row in range(4):
        assert np.array_equal(tile(picked, 0, row, 0), tile(default, 0, row, 2))
        assert np.array_equal(tile(picked, 0, row, 1), tile(default, 0, row, 0))
    code = main("--generator", generator_file, "--out", tmp_path / "bad", "--categories", "1,3")
    one_line_error(code, capsys.readouterr().err, "--categories: 3", "model.num_categories is 3")
    assert not (tmp_path / "bad").exists()


def test_existing_output_is_refused_unless_overwrite(generator_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main("--generator", generator_file, "--out", out, "--seed", 0) == 0
    first = {n: (out / n).read_bytes() for n in NAMES}
    capsys.readouterr()
    one_line_error(main("--generator", generator_file, "--out", out, "--seed", 1), capsys.readouterr().err,
                   "already exists", "--overwrite")
    assert {n: (out / n).read_bytes() for n in NAMES} == first, "nothing rewritten"
    # One existing file is enough to refuse, and then none of the others is written.
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "vary_z.png").write_bytes(b"mine")
    one_line_error(main("--generator", generator_file, "--out", lone), capsys.readouterr().err,
                   str(lone / "vary_z.png"))
    assert sorted(p.name for p in lone.iterdir()) == ["vary_z.png"] and (lone / "vary_z.png").read_bytes() == b"mine"
    assert main("--generator", generator_file, "--out", out, "--seed", 1, "--overwrite") == 0
    assert all((out / n).read_bytes() != first[n] for n in NAMES), "replaced with --overwrite"


def test_bad_generators_and_arguments_are_one_line_errors(generator_file, model, tmp_path, capsys):
    segmenter = tmp_path / "segmenter.pt"
    segmenter.write_bytes(to_bytes(segmenter_artifact(UNet(model.seg_width, model.seg_depth), model)))
    garbage = tmp_path / "notes.pt"
    garbage.write_text("not a checkpoint")
    out = tmp_path / "out"
    for path, message in ((tmp_path / "missing.pt", "does not exist"),
                          (segmenter, "is a 'comgan.segmenter' file, not a generator"),
                          (garbage, "is not a readable torch file"),
                          (tmp_path, "is not a file")):
        one_line_error(main("--generator", path, "--out", out), capsys.readouterr().err, str(path), message)
    for args, message in ((["--out", out], "--generator"),
                          (["--generator", generator_file, "--out", out, "--count", "0"], "--count"),
                          (["--generator", generator_file, "--out", out, "--categories", "a,b"], "--categories"),
                          (["--generator", generator_file, "--out", out, "--device", "tpu9"], "--device")):
        one_line_error(main(*args), capsys.readouterr().err, message)
    if not torch.cuda.is_available():
        code = main("--generator", generator_file, "--out", out, "--device", "cuda")
        one_line_error(code, capsys.readouterr().err, "no CUDA")
    (tmp_path / "file").write_text("x")
    one_line_error(main("--generator", generator_file, "--out", tmp_path / "file"), capsys.readouterr().err)
    assert not out.exists(), "nothing written on an error"


def test_generation_is_chunked_no_grad_and_in_eval_mode(model):
    torch.manual_seed(0)
    g = Generator(model).train()  # a generator left in train mode: the grids still use eval mode
    z, f, b, _, _ = sample_codes(7, model, generator=torch.Generator().manual_seed(0))
    batches = []
    handle = g.register_forward_hook(lambda m, inputs, output: batches.append((inputs[0].shape[0],
                                                                               torch.is_grad_enabled(), m.training)))
    out = generate(g, z, f, b, chunk=3)
    handle.remove()
    assert batches == [(3, False, False), (3, False, False), (1, False, False)]
    assert g.training, "the caller's mode is restored"
    with torch.no_grad():
        reference = g.eval()(z, f, b)
    for name in ("image", "mask", "fg", "bg"):
        assert torch.allclose(getattr(out, name), getattr(reference, name), atol=1e-5), name
        assert not getattr(out, name).requires_grad


def test_the_job_calls_the_generator_in_batches_of_batch(generator_file, tmp_path, monkeypatch):
    assert main("--generator", generator_file, "--out", tmp_path / "whole", "--groups", 2) == 0
    sizes = []
    forward = Generator.forward
    monkeypatch.setattr(Generator, "forward", lambda self, z, f, b: sizes.append(len(z)) or forward(self, z, f, b))
    assert main("--generator", generator_file, "--out", tmp_path / "chunked", "--groups", 2, "--batch", 5) == 0
    assert sizes == [5, 1, 5, 1, 5, 5, 5, 1], sizes  # 6, 6 and 16 images
    for name in NAMES:  # the same picture, up to float rounding across batch sizes
        a, b = png(tmp_path / "whole" / name).astype(int), png(tmp_path / "chunked" / name).astype(int)
        assert np.abs(a - b).max() <= 1, name


def test_tensorboard_images(generator_file, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    assert main("--generator", generator_file, "--out", tmp_path / "out", "--tensorboard", tb) == 0
    events = EventAccumulator(str(tb), size_guidance={"images": 0})
    events.Reload()
    assert sorted(events.Tags()["images"]) == ["generate/vary_b", "generate/vary_f", "generate/vary_z"]
    for tag, name in zip(("generate/vary_f", "generate/vary_b", "generate/vary_z"), NAMES):
        [image] = events.Images(tag)
        h, w, _ = png(tmp_path / "out" / name).shape
        assert (image.step, image.height, image.width) == (7, h, w), tag


def test_generator_and_output_on_s3(generator_file, s3_bucket, tmp_path, capsys):
    url = f"{s3_bucket}/runs/r/stage1/generator.pt"
    write_bytes(url, generator_file.read_bytes())
    assert main("--generator", url, "--out", f"{s3_bucket}/controls/", "--seed", 2) == 0
    assert main("--generator", generator_file, "--out", tmp_path, "--seed", 2) == 0
    for name in NAMES:
        assert read_bytes(f"{s3_bucket}/controls/{name}") == (tmp_path / name).read_bytes(), name
    capsys.readouterr()
    code = main("--generator", url, "--out", f"{s3_bucket}/controls")
    one_line_error(code, capsys.readouterr().err, "already exists")
    code = main("--generator", f"{s3_bucket}/nope.pt", "--out", tmp_path / "x")
    one_line_error(code, capsys.readouterr().err, "does not exist")


@pytest.mark.parametrize("args, words", [
    (["--scale", "100000"], ["--scale", "must be <= 64"]),
    (["--scale", "64", "--count", "64"], ["grids would be", "MP", "--scale, --count or --groups"]),
])
def test_grids_too_big_to_hold_are_one_line_before_generating(generator_file, tmp_path, capsys, args, words):
    """A size that would need terabytes (or a grid no image reader opens) is refused at once,
    not a memory error after minutes of generating."""
    out = tmp_path / "out"
    one_line_error(main("--generator", generator_file, "--out", out, *args), capsys.readouterr().err, *words)
    assert not out.exists()


@pytest.mark.parametrize("groups, columns, scale", [(1, 1, 1), (2, 4, 3), (3, 2, 1)])
def test_grid_size_is_the_size_control_grid_lays_out(groups, columns, scale):
    """generate.py refuses oversized grids from grid_size before generating: it must be exact."""
    from comgan.controls import control_grid, grid_size
    from comgan.networks import GeneratorOutput

    n, res = groups * columns, 16
    image = torch.zeros(n, 3, res, res)
    out = GeneratorOutput(image, torch.zeros(n, 1, res, res), image, image, image)
    assert tuple(control_grid(out, groups, scale).shape[1:]) == grid_size(res, groups, columns, scale)
