"""Stage handoff: jobs/segment.py trains stage 2 alone from any exported generator (local or S3),
and refuses an artifact that does not fit before any worker starts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from comgan.artifacts import from_bytes, generator_artifact, load_segmenter, segmenter_artifact, to_bytes
from cluster.config import load_config
from comgan.networks import Generator, UNet
from comgan.training import Stage1State, Stage1Step
from data_shards.io import write_bytes
from jobs.segment import main as segment_main
from tests.helpers import exit_code, one_line_error, tiny_data


def tiny_generator_file(path: Path, *overrides: str) -> Path:
    """An (untrained) generator.pt of the tiny model, with optional model overrides."""
    model = load_config("tiny", list(overrides)).model
    torch.manual_seed(0)
    path.write_bytes(to_bytes(generator_artifact(Generator(model), model, {"step": 0})))
    return path


def segment(*args: str) -> int:
    return exit_code(segment_main, *args)


@pytest.mark.parametrize("overrides, message", [
    (["model.num_categories=5"], "model.num_categories is 5 in the artifact but 3 in the config"),
    (["model.resolution=32"], "model.resolution is 32 in the artifact but 16 in the config"),
    (["model.ngf=16"], "model.ngf is 16 in the artifact but 8 in the config"),
])
def test_a_generator_of_another_model_is_refused_naming_the_mismatch(tmp_path, capsys, overrides, message):
    artifact = tiny_generator_file(tmp_path / "generator.pt", *overrides)
    code = segment("--generator", artifact, "--config", "tiny", "--storage", tmp_path)
    one_line_error(code, capsys.readouterr().err, message)
    assert not (tmp_path / "tiny-segment").exists(), "refused before anything is written"


def test_files_that_are_not_generators_are_refused(tmp_path, capsys):
    model = load_config("tiny").model
    not_generator = tmp_path / "segmenter.pt"
    not_generator.write_bytes(to_bytes(segmenter_artifact(UNet(model.seg_width, model.seg_depth), model)))
    garbage = tmp_path / "notes.pt"
    garbage.write_text("not a checkpoint")
    (tmp_path / "folder.pt").mkdir()
    for path, message in ((not_generator, "is a 'comgan.segmenter' file, not a generator"),
                          (garbage, "is not a readable torch file"),
                          (tmp_path / "missing.pt", "does not exist"),
                          (tmp_path / "folder.pt", "is not a file: it is a folder")):
        code = segment("--generator", path, "--config", "tiny", "--storage", tmp_path)
        one_line_error(code, capsys.readouterr().err, message)


@pytest.mark.ray
def test_segmenter_from_a_generator_on_s3_with_bf16(local_ray, s3_bucket, tiny_shards, tmp_path, capsys):
    """Stage 2 alone, 2 workers in bf16 mixed precision, from an artifact stored on S3."""
    url = f"{s3_bucket}/elsewhere/generator.pt"
    write_bytes(url, tiny_generator_file(tmp_path / "generator.pt").read_bytes())
    code = segment("--generator", url, "--config", "tiny", "--workers", "2", "--storage", str(tmp_path),
                   *tiny_data(tiny_shards), "run.mixed_precision=bf16")
    assert code == 0, capsys.readouterr().err
    run = tmp_path / "tiny-segment"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["generator"] == url and "stage1" not in summary
    assert summary["stage2"]["num_processes"] == 2 and summary["stage2"]["replicas_in_sync"] is True
    assert not (run / "stage1").exists(), "stage 1 is not run"
    load_segmenter(from_bytes((run / "stage2" / "segmenter.pt").read_bytes()), load_config("tiny").model)
    assert json.loads((run / "eval.json").read_text())["num_images"] == 32


def test_stage1_step_under_bf16_autocast():
    """The stage-1 phases run under accelerate's bf16 autocast on CPU: activations in bf16,
    weights and optimiser state stay fp32, losses finite."""
    cfg = load_config("tiny")
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    state = Stage1State.create(cfg)
    state.G, state.D_z, state.D_f, state.D_b, state.opt_D, state.opt_G = accelerator.prepare(
        state.G, state.D_z, state.D_f, state.D_b, state.opt_D, state.opt_G)
    seen = []
    state.G.mask_net.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    stats = Stage1Step(state, cfg, backward=accelerator.backward)(torch.rand(4, 3, 16, 16) * 2 - 1)
    assert torch.bfloat16 in seen
    assert all(torch.isfinite(v).all() for v in stats.values())
    assert all(p.dtype == torch.float32 for p in state.G.parameters())


class _RunsCodeWhenUnpickled:
    """What a crafted artifact carries: unpickling it would create `path`."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_file_that_needs_pickled_code_is_refused_without_running_it(tmp_path, capsys):
    ran = tmp_path / "code-ran"
    crafted = tmp_path / "generator.pt"
    crafted.write_bytes(to_bytes({"kind": "comgan.generator", "payload": _RunsCodeWhenUnpickled(ran)}))
    code = segment("--generator", crafted, "--config", "tiny", "--storage", tmp_path)
    one_line_error(code, capsys.readouterr().err, "refused: loading it would run pickled code")
    assert not ran.exists(), "the pickled code must never run"


def test_everything_the_project_saves_loads_without_pickled_code(tmp_path):
    """Checkpoints hold optimiser states, RNG states and the config besides the weights."""
    cfg = load_config("tiny")
    torch.manual_seed(0)
    state = Stage1State.create(cfg)
    Stage1Step(state, cfg)(torch.rand(8, 3, 16, 16) * 2 - 1)
    saved = {"kind": "comgan.stage1_checkpoint", "config": cfg.to_dict(), "rng": [{"torch": torch.get_rng_state()}],
             **state.state_dict()}
    loaded = from_bytes(to_bytes(saved))
    assert loaded["step"] == 1 and torch.equal(loaded["rng"][0]["torch"], saved["rng"][0]["torch"])
