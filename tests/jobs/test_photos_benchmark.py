"""benchmarks/photos.py without training: the held-out split, a collection's shards, the --table
summary, resuming, and one-line errors. Seconds; no Ray, no training (jobs are faked)."""
from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ROOT, one_line_error, run_script


@pytest.fixture
def photos(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import photos

    return photos


def fake_collection(root: Path, count: int) -> Path:
    """count photos of assorted sizes; photo i's mask marks the left (i + 1) / (count + 1) of it."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        h, w = 40 + 3 * i, 60 - 2 * i
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"p{i:03d}.jpg")
        mask = np.zeros((h, w), np.uint8)
        mask[:, : round(w * (i + 1) / (count + 1))] = 255
        Image.fromarray(mask).save(root / "masks" / f"p{i:03d}.png")
    return root


def shard_samples(url: str) -> dict[str, dict]:
    """{key: {field: decoded array}} of every sample in a shard set."""
    samples: dict[str, dict] = {}
    for tar_path in sorted(Path(url).glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, _, field = member.name.partition(".")
                data = tar.extractfile(member).read()
                if field.endswith("png"):
                    samples.setdefault(key, {})[field] = np.asarray(Image.open(io.BytesIO(data)))
    return samples


@pytest.mark.parametrize("count", [4, 7, 13, 200, 600])
def test_the_split_is_deterministic_disjoint_and_a_quarter(photos, count):
    stems = [f"image_{i:04d}" for i in random.Random(count).sample(range(10000), count)]
    trained, held = photos.split(stems)
    assert (trained, held) == photos.split(list(reversed(stems)))   # by sorted stem, not by listing order
    assert not set(trained) & set(held) and sorted(trained + held) == sorted(stems)
    assert len(held) == count // 4
    assert held == sorted(stems)[3::4]


def test_a_collection_becomes_train_shards_without_masks_and_eval_shards_with_them(photos, tmp_path):
    source = fake_collection(tmp_path / "toy", 8)
    urls = photos.collection_shards("toy", source, out=tmp_path / "out")
    assert urls == {s: str(tmp_path / "out" / "toy" / "shards" / s) for s in photos.SETS}
    train, trained, held = (shard_samples(urls[s]) for s in photos.SETS)
    assert sorted(held) == ["p003", "p007"]
    assert sorted(train) == sorted(trained) == [f"p{i:03d}" for i in range(8) if i % 4 != 3]
    assert all(set(s) == {"image.png"} for s in train.values())
    assert all(set(s) == {"image.png", "mask.png"} for s in [*trained.values(), *held.values()])
    for samples in (train, trained, held):
        assert all(s["image.png"].shape == (128, 128, 3) for s in samples.values())
    for key, s in [*trained.items(), *held.items()]:   # each mask is its own photo's, squashed alike
        i = int(key[1:])
        assert abs((s["mask.png"] > 127).mean() - (i + 1) / 9) < 0.02
    manifests = {s: json.loads((Path(u) / "manifest.json").read_text()) for s, u in urls.items()}
    assert [manifests[s]["num_masks"] for s in photos.SETS] == [0, 6, 2]

    photos.collection_shards("toy", source, out=tmp_path / "out")   # unchanged source: nothing rewritten
    again = {s: json.loads((Path(u) / "manifest.json").read_text()) for s, u in urls.items()}
    assert again == manifests
    fake_collection(tmp_path / "more", 12)                           # more photos: written anew
    urls = photos.collection_shards("toy", tmp_path / "more", out=tmp_path / "out")
    assert sorted(shard_samples(urls["eval-heldout"])) == ["p003", "p007", "p011"]


def row(photos, collection, seed, heldout, trained=0.7, grabcut=0.6, variant="preset", numerics="native"):
    return {"variant": variant, "overrides": [], "collection": collection, "seed": seed, "numerics": numerics,
            "heldout_iou": heldout, "heldout_iou_paper": heldout + 0.1, "heldout_grabcut": grabcut,
            "trained_iou": trained, "trained_iou_paper": trained + 0.1, "trained_grabcut": grabcut,
            "wall_s": 3000 + 60 * seed, "cpu": "Test CPU", "torch_capability": "AVX512"}


def test_the_table_gives_min_and_median_over_seeds_per_collection(photos):
    rows = [row(photos, "flowers", 0, 0.80, trained=0.90),
            row(photos, "horses", 0, 0.50, grabcut=None), row(photos, "horses", 2, 0.60),
            row(photos, "horses", 1, 0.70, trained=0.75),
            row(photos, "flowers", 1, 0.60, trained=0.50),
            row(photos, "horses", 0, 0.10, numerics="avx2")]
    got = photos.summarise(rows)
    assert [(e["collection"], e["numerics"], e["seeds"]) for e in got] == [
        ("horses", "native", [0, 1, 2]), ("horses", "avx2", [0]), ("flowers", "native", [0, 1])]
    horses, horses_avx2, flowers = got
    assert horses["heldout_iou"] == pytest.approx((0.50, 0.60))
    assert horses["trained_iou"] == (0.70, 0.70)
    assert horses["heldout_grabcut"] == (0.6, 0.6)          # a missing figure is left out, not counted as 0
    assert horses["wall_s"] == (3000, 3060)
    assert horses_avx2["heldout_iou"] == (0.10, 0.10)
    assert flowers["heldout_iou"] == pytest.approx((0.60, 0.70))
    assert flowers["trained_iou"] == pytest.approx((0.50, 0.70))
    assert flowers["heldout_iou_paper"] == pytest.approx((0.70, 0.80))
    text = photos.table(rows)
    assert "0.500/0.600" in text and "0.600/0.700" in text
    assert "strict IoU 0.655" in text and "strict IoU 0.724" in text and "DS-ComGAN 0.769" in text
    assert text.index("0.655") < text.index("flowers ")   # each collection's bar below its rows
    assert "Test CPU (AVX512)" in text


def test_rows_are_appended_as_runs_end_and_a_rerun_skips_them(photos, tmp_path, monkeypatch):
    fake_collection(tmp_path / "toy", 8)
    monkeypatch.setattr(photos, "OUT", tmp_path / "out")
    calls = []

    def fake_run(variant, overrides, collection, seed, numerics, urls, storage, generators_of=None):
        calls.append((variant, collection, seed))
        if seed == 2:
            return None   # a failed run: no row
        return row(photos, collection, seed, 0.5) | {"variant": variant, "overrides": overrides}

    monkeypatch.setattr(photos, "run_one", fake_run)
    out = tmp_path / "photos.json"
    argv = ["--collections", "toy", "--source", f"toy={tmp_path / 'toy'}", "--seeds", "0", "1", "2",
            "--out", str(out), "--storage", str(tmp_path / "runs"), "--variant", "b2", "stage1.beta=2"]
    assert photos.main(argv) == 1
    assert calls == [("b2", "toy", 0), ("b2", "toy", 1), ("b2", "toy", 2)]
    assert [(r["seed"], r["overrides"]) for r in json.loads(out.read_text())] == [(0, ["stage1.beta=2"]),
                                                                                  (1, ["stage1.beta=2"])]
    calls.clear()
    assert photos.main(argv) == 1
    assert calls == [("b2", "toy", 2)]                     # only the run without a row
    assert photos.main([*argv[:-2], "b2", "stage1.beta=3"]) == 2   # same name, other overrides: refused
    assert len(json.loads(out.read_text())) == 2


def test_stage_two_alone_trains_on_the_named_variants_generator_and_says_so(photos, tmp_path, monkeypatch, capsys):
    storage = tmp_path / "runs"
    urls = {"train": "T", "eval-heldout": "H", "eval-trained": "E"}
    # No run of the named variant for this seed: nothing is started.
    monkeypatch.setattr(photos.subprocess, "call", lambda *a, **k: pytest.fail("a job was started"))
    assert photos.run_one("s2-x", ["stage2.lam=1"], "toy", 0, "native", urls, storage, "preset") is None

    generator = storage / photos.run_name("preset", "toy", 0, "native") / "stage1" / "generator.pt"
    generator.parent.mkdir(parents=True)
    generator.write_bytes(b"")
    commands = []
    monkeypatch.setattr(photos.subprocess, "call", lambda cmd, **k: commands.append(cmd) or 1)  # the job fails
    assert photos.run_one("s2-x", ["stage2.lam=1"], "toy", 0, "native", urls, storage, "preset") is None
    (cmd,) = commands
    assert cmd[1].endswith("jobs/segment.py") and cmd[cmd.index("--generator") + 1] == str(generator)
    assert cmd[cmd.index("--name") + 1] == "photos-s2-x-toy-seed0" and cmd[-1] == "stage2.lam=1"

    rows = [row(photos, "toy", 0, 0.5) | {"variant": "s2-x", "overrides": ["stage2.lam=1"], "generators_of": "preset"}]
    assert "s2-x (stage 2 on preset)" in photos.table(rows)
    out = tmp_path / "r.json"
    out.write_text(json.dumps(rows))
    fake_collection(tmp_path / "toy", 8)
    monkeypatch.setattr(photos, "OUT", tmp_path / "out")
    calls = []
    monkeypatch.setattr(photos, "run_one", lambda *a: calls.append(a) or row(photos, "toy", a[3], 0.6)
                        | {"variant": a[0], "overrides": a[1], "generators_of": a[7]})
    base = ["--collections", "toy", "--source", f"toy={tmp_path / 'toy'}", "--out", str(out), "--seeds", "0", "1"]
    assert photos.main([*base, "--generators-of", "preset", "--variant", "s2-x", "stage2.lam=1"]) == 0
    assert [(c[0], c[3], c[7]) for c in calls] == [("s2-x", 1, "preset")]    # seed 0's row was there
    assert [r["generators_of"] for r in json.loads(out.read_text())] == ["preset", "preset"]
    # A variant's rows are of one kind: both stages, or stage 2 alone on one variant's generators.
    assert photos.main([*base, "--variant", "s2-x", "stage2.lam=1"]) == 2
    assert "has rows of stage 2 alone on 'preset'" in capsys.readouterr().err
    assert photos.main([*base, "--generators-of", "s2-x", "--variant", "s2-x", "stage2.lam=1"]) == 2
    assert "cannot train on its own generator" in capsys.readouterr().err
    assert photos.main([*base, "--generators-of", "preset"]) == 2          # no --variant: the preset itself
    assert "name the variant" in capsys.readouterr().err
    assert photos.main([*base, "--generators-of", "../x", "--variant", "s2-y"]) == 2
    assert "a variant name" in capsys.readouterr().err
    out.write_text(json.dumps([row(photos, "toy", 0, 0.5) | {"variant": "full", "overrides": []}]))
    assert photos.main([*base, "--generators-of", "preset", "--variant", "full"]) == 2
    assert "has rows of both stages" in capsys.readouterr().err
    assert len(calls) == 1


@pytest.mark.parametrize("args, message", [
    (["--source", "horses={missing}", "--collections", "horses"], "horses: no photos at {missing}"),
    (["--collections", "cats"], "unknown collection 'cats'"),
    (["--source", "horses"], "expected NAME=PATH"),
])
def test_bad_input_is_one_error_line(tmp_path, args, message):
    missing = tmp_path / "nowhere"
    p = run_script("benchmarks/photos.py", *[a.format(missing=missing) for a in args], "--out", tmp_path / "r.json",
                   timeout=60)
    one_line_error(p.returncode, p.stderr, message.format(missing=missing))
    assert not (tmp_path / "r.json").exists()


def test_help_explains_the_split_the_sets_and_the_table():
    p = run_script("benchmarks/photos.py", "--help", timeout=60)
    assert p.returncode == 0
    for words in ("every 4th", "eval-heldout", "eval-trained", "--config photos", "--numerics", "--table",
                  "0.655", "0.724", "DS-ComGAN 0.769", "ATEN_CPU_CAPABILITY=avx2"):
        assert words in p.stdout


def test_the_photos_preset_is_sized_for_an_hour_and_reads_the_users_shards(tmp_path, monkeypatch):
    from cluster.config import ConfigError, load_config
    from data_shards.index import DatasetError, read_manifest

    cfg = load_config("photos")
    assert (cfg.stage1.steps, cfg.stage1.batch_size, cfg.stage2.steps, cfg.stage2.batch_size,
            cfg.stage2.self_train.start) == (2000, 16, 1800, 16, 600)
    assert (cfg.run.checkpoint_every, cfg.run.image_every, cfg.run.mixed_precision) == (250, 250, "no")
    assert (cfg.data.eval_resolution, cfg.data.eval_grabcut, cfg.data.synthetic) == (128, True, False)
    assert "benchmarks" not in cfg.data.train + cfg.data.eval and cfg.data.eval == ""
    assert cfg.stage1.augment and cfg.stage1.mask_border_weight > 0 and cfg.stage2.self_train.weight > 0
    monkeypatch.chdir(tmp_path)   # the preset's data.train, where nothing is: the error names it
    with pytest.raises(DatasetError, match=f"no shard dataset at {tmp_path / cfg.data.train}"):
        read_manifest(str(tmp_path / cfg.data.train))
    with pytest.raises(ConfigError, match="unknown config 'horses'"):
        load_config("horses")   # replaced by `photos`
