"""Bad data never crashes a run: each damaged sample is decoded or skipped, and counted by kind."""
from __future__ import annotations

import io
import itertools

import numpy as np
import torch
from PIL import Image

from data_shards.problems import PROBLEM_KINDS, ProblemLog
from data_shards.reader import eval_batches, train_loader
from fake_datasets import write_set

SIZE = 16


def encode(array: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgb(value: int) -> np.ndarray:
    return np.full((SIZE, SIZE, 3), value, np.uint8)


def mask(size: int = SIZE) -> bytes:
    m = np.zeros((size, size), np.uint8)
    m[: size // 2] = 255  # top half is foreground
    return encode(m)


def good(key: str, value: int = 100) -> dict:
    return {"__key__": key, "image.png": encode(rgb(value)), "mask.png": mask(), "json": b"{}"}


def test_image_modes_are_converted_to_8bit_rgb(tmp_path):
    grey16 = np.full((SIZE, SIZE), 32896, np.uint16)   # 128.5 * 256: half intensity in 16 bits
    rgba = np.dstack([rgb(200), np.full((SIZE, SIZE), 7, np.uint8)])
    palette = Image.fromarray(rgb(60)).convert("P")
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    samples = [
        {"__key__": "grey", "image.png": encode(np.full((SIZE, SIZE), 50, np.uint8)), "mask.png": mask()},
        {"__key__": "grey16", "image.png": encode(grey16), "mask.png": mask()},
        {"__key__": "rgba", "image.png": encode(rgba), "mask.png": mask()},
        {"__key__": "palette", "image.png": buf.getvalue(), "mask.png": mask()},
        {"__key__": "jpeg", "image.jpg": encode(rgb(90), "JPEG", quality=95), "mask.png": mask()},
    ]
    assert Image.open(io.BytesIO(samples[1]["image.png"])).mode.startswith("I")  # really 16-bit
    url = write_set(tmp_path / "modes", [samples])
    problems = ProblemLog()
    images, masks = next(eval_batches(url, 8, problems=problems))
    assert sum(problems.total.values()) == 0
    pixels = ((images + 1) * 127.5).round()
    assert images.shape == (5, 3, SIZE, SIZE)
    for i, want in enumerate([50, 128, 200, 60, 90]):
        assert abs(pixels[i].mean().item() - want) <= 2, (samples[i]["__key__"], pixels[i].mean().item())
    assert torch.equal(masks[:, 0, : SIZE // 2], torch.ones(5, SIZE // 2, SIZE))
    assert torch.equal(masks[:, 0, SIZE // 2:], torch.zeros(5, SIZE // 2, SIZE))


def damaged_set(tmp_path) -> tuple[str, set]:
    """Shard 0: good samples around a corrupt, a truncated JPEG and an image-less sample.
    Shard 1: good samples, then the file is cut off in the middle of a later sample."""
    jpeg = encode(rgb(120), "JPEG")
    shard0 = [good("a0"), {"__key__": "corrupt", "image.png": b"this is no png", "mask.png": mask()},
              good("a1"), {"__key__": "cut", "image.jpg": jpeg[: len(jpeg) // 2], "mask.png": mask()},
              {"__key__": "noimage", "mask.png": mask(), "json": b"{}"}, good("a2")]
    shard1 = [good(f"b{i}") for i in range(4)] + [good("lost", 7)]
    url = write_set(tmp_path / "damaged", [shard0, shard1])
    path = tmp_path / "damaged" / "shard-000001.tar"
    data = path.read_bytes()
    tail_start = data.index(b"lost.image.png")  # the tar header of the last sample's image
    path.write_bytes(data[: tail_start + 700])  # cut inside that sample's image
    return url, {"a0", "a1", "a2", "b0", "b1", "b2", "b3"}


def test_train_loader_skips_and_counts_damaged_samples(tmp_path):
    url, usable = damaged_set(tmp_path)
    loader = train_loader(url, 7, num_workers=0, seed=3, hflip=False)
    batches = list(itertools.islice(iter(loader), 3))  # 21 samples = three passes over the 7 usable
    keys = [k for b in batches for k in b.keys]
    assert set(keys) == usable and len(keys) == 21
    for b in batches:
        assert b.images.shape == (7, 3, SIZE, SIZE) and torch.isfinite(b.images).all()
    counts = dict(zip(PROBLEM_KINDS, np.sum([b.problems for b in batches], axis=0).tolist()))
    # Problems met after a batch's last sample go with the next batch, so exact counts depend on
    # the order; each kind met here must show up, and nothing else.
    assert counts["truncated_shard"] >= 3 and counts["undecodable_image"] >= 2 and counts["missing_image"] >= 1
    assert counts["missing_mask"] == counts["undecodable_mask"] == counts["mask_resized"] == 0


def test_train_loader_counts_survive_loader_worker_processes(tmp_path):
    url, usable = damaged_set(tmp_path)
    batches = list(itertools.islice(iter(train_loader(url, 7, num_workers=2, seed=3)), 4))
    counts = dict(zip(PROBLEM_KINDS, np.sum([b.problems for b in batches], axis=0).tolist()))
    assert counts["undecodable_image"] >= 2 and counts["missing_image"] >= 1 and counts["truncated_shard"] >= 1
    assert set(k for b in batches for k in b.keys) <= usable


def test_eval_skips_damaged_samples_and_resizes_odd_masks(tmp_path, caplog):
    url, usable = damaged_set(tmp_path)
    problems = ProblemLog()
    with caplog.at_level("WARNING", logger="data_shards"):
        batches = list(eval_batches(url, 4, problems=problems))
    assert sum(len(x) for x, _ in batches) == len(usable)
    assert problems.total["undecodable_image"] == 2 and problems.total["missing_image"] == 1
    assert problems.total["truncated_shard"] == 1
    assert "corrupt" in caplog.text and "shard-000001.tar" in caplog.text

    odd = [{"__key__": "bigmask", "image.png": encode(rgb(10)), "mask.png": mask(2 * SIZE)},
           {"__key__": "nomask", "image.png": encode(rgb(10))},
           {"__key__": "badmask", "image.png": encode(rgb(10)), "mask.png": b"garbage"}, good("ok")]
    url = write_set(tmp_path / "odd", [odd])
    problems = ProblemLog()
    (images, masks), = list(eval_batches(url, 8, problems=problems))
    assert images.shape == (2, 3, SIZE, SIZE) and masks.shape == (2, 1, SIZE, SIZE)
    assert torch.equal(masks[0], masks[1])  # the 2x mask, resized, is the same top half
    assert problems.total == {**dict.fromkeys(PROBLEM_KINDS, 0), "mask_resized": 1, "missing_mask": 1,
                              "undecodable_mask": 1}


def test_zero_one_masks_count_as_foreground(tmp_path):
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[: SIZE // 2] = 1
    url = write_set(tmp_path / "01", [[{"__key__": "x", "image.png": encode(rgb(5)), "mask.png": encode(m)}]])
    _, masks = next(eval_batches(url, 1))
    assert masks[0, 0, : SIZE // 2].eq(1).all() and masks[0, 0, SIZE // 2:].eq(0).all()


def test_warnings_are_rate_limited(caplog):
    log = ProblemLog()
    with caplog.at_level("WARNING", logger="data_shards"):
        for i in range(2500):
            log.add("undecodable_image", f"sample {i}")
    assert log.total["undecodable_image"] == 2500
    assert len(caplog.records) == 5 + 2  # the first five, then #1000 and #2000
    assert log.take()[PROBLEM_KINDS.index("undecodable_image")] == 2500 and sum(log.take()) == 0
