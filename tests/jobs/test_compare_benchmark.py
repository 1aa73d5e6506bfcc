"""benchmarks/compare.py without training: its rows from evaluation reports, the table, resuming,
and ReDO's settings on the photos. Seconds; no Ray (the runs are faked)."""
from __future__ import annotations

import json

import pytest

from tests.helpers import ROOT


@pytest.fixture
def compare(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import compare

    return compare


def report(segmenter, grabcut=0.6):
    part = lambda iou: {"iou_strict": iou, "iou_paper": iou + 0.05, "dice_strict": 0, "dice_paper": 0}  # noqa: E731
    out = {"num_images": 50, "score_resolution": 128, "segmenter": part(segmenter),
           "centred_box": part(0.4), "all_foreground": part(0.2)}
    if grabcut is not None:
        out["grabcut"] = part(grabcut)
    return out


def test_the_baselines_come_once_with_ds_comgans_rows(compare, tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "ROOT", tmp_path)
    ours = compare.make_rows("ds-comgan", "horses", 0, "avx2", tmp_path / "run", 2000.4, report(0.7))
    assert [r["method"] for r in ours] == ["ds-comgan", "grabcut", "centred_box", "all_foreground"]
    assert ours[0]["iou"] == 0.7 and ours[0]["iou_paper"] == pytest.approx(0.75) and ours[0]["wall_s"] == 2000
    assert ours[1]["wall_s"] is None and ours[1]["iou"] == 0.6
    theirs = compare.make_rows("redo", "horses", 0, "avx2", tmp_path / "run", 10, report(0.3))
    assert [r["method"] for r in theirs] == ["redo"]
    without = compare.make_rows("ds-comgan", "synthetic", 0, "native", tmp_path / "run", 10, report(0.8, None))
    assert "grabcut" not in [r["method"] for r in without]


def test_the_table_gives_each_methods_median_per_collection(compare, tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "ROOT", tmp_path)
    rows = (compare.make_rows("ds-comgan", "horses", 0, "avx2", tmp_path / "a", 1800, report(0.5))
            + compare.make_rows("ds-comgan", "horses", 1, "avx2", tmp_path / "b", 2400, report(0.7))
            + compare.make_rows("ds-comgan", "horses", 2, "avx2", tmp_path / "c", 2100, report(0.9))
            + compare.make_rows("redo", "horses", 0, "avx2", tmp_path / "d", 2000, report(0.3))
            + compare.make_rows("redo", "synthetic", 0, "native", tmp_path / "e", 600, report(0.2)))
    text = compare.table(rows)
    ds = next(line for line in text.splitlines() if line.startswith("ds-comgan"))
    assert "0.700" in ds and "0.750" in ds and " 35 " in f"{ds} "   # median IoU, IoU*, minutes
    redo = next(line for line in text.splitlines() if line.startswith("redo"))
    assert redo.split()[1:4] == ["0.200", "0.250", "10"] and redo.split()[4:6] == ["0.300", "0.350"]
    assert "horses: seeds 0,1,2; scored on 50 images at 128 px" in text
    assert text.index("synthetic") < text.index("horses")


def test_rows_are_written_as_runs_end_and_a_rerun_skips_them(compare, tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "ROOT", tmp_path)
    calls = []

    def fake(method, *where):
        calls.append((method, *where))
        if where[-2] == 1 and method == "redo":
            return None  # a failed run: no row
        return compare.make_rows(method, where[0] if len(where) == 3 else "synthetic", where[-2], where[-1],
                                 tmp_path / "r", 60, report(0.5))

    monkeypatch.setattr(compare, "run_synthetic", fake)
    monkeypatch.setattr(compare, "run_photos", fake)
    out = tmp_path / "compare.json"
    argv = ["--collections", "synthetic", "--seeds", "0", "1", "--out", str(out)]
    assert compare.main(argv) == 1
    assert calls == [("ds-comgan", 0, "native"), ("ds-comgan", 1, "native"), ("redo", 0, "native"),
                     ("redo", 1, "native")]
    saved = json.loads(out.read_text())["rows"]
    assert sorted({(r["method"], r["seed"]) for r in saved if r["method"] in compare.METHODS}) == [
        ("ds-comgan", 0), ("ds-comgan", 1), ("redo", 0)]
    calls.clear()
    assert compare.main(argv) == 1
    assert calls == [("redo", 1, "native")]


def test_redo_on_the_photos_is_the_photos_preset_with_redos_settings(compare):
    from cluster.config import load_config

    cfg, redo = load_config("photos", compare.REDO_ON_PHOTOS), load_config("redo")
    assert cfg.model.variant == "redo" and cfg.model.resolution == 64
    assert (cfg.model.z_dim, cfg.stage2.lr, cfg.stage2.batch_size) == (redo.model.z_dim, redo.stage2.lr,
                                                                      redo.stage2.batch_size)
    assert cfg.data.eval_resolution == 128 and cfg.data.eval_grabcut
