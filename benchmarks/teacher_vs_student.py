"""Score a run's segmenter S and its self-training EMA teacher side by side, from the run's newest
stage-2 checkpoint, on the same labelled shards and geometry (cluster.evaluate): which of the two
should a self-trained run export?

    python benchmarks/teacher_vs_student.py benchmarks/out/horses/runs/horses-self-train \
        --data benchmarks/out/horses/shards/eval-128px-holdout0 --resolution 128
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.evaluate import evaluate  # noqa: E402
from comgan.artifacts import from_bytes, segmenter_artifact, to_bytes  # noqa: E402
from comgan.config import model_config_from_dict  # noqa: E402
from comgan.networks import UNet  # noqa: E402


def newest_checkpoint(run: Path) -> Path:
    """`run` itself when it is a checkpoint file, else the newest stage-2 checkpoint in the run."""
    if run.is_file():
        return run
    found = sorted((run / "stage2").glob("checkpoint_*/state.pt"))
    if not found:
        raise SystemExit(f"error: no stage-2 checkpoint under {run / 'stage2'}")
    return found[-1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder (local), or one of its stage-2 checkpoints' state.pt")
    p.add_argument("--data", required=True, help="labelled evaluation shards")
    p.add_argument("--resolution", type=int, default=0, help="score at this size (default: the segmenter's)")
    p.add_argument("--out", help="write the two results (means only) as JSON here")
    a = p.parse_args()
    path = newest_checkpoint(Path(a.run))
    saved = from_bytes(path.read_bytes(), what=str(path))
    model = model_config_from_dict(saved["config"]["model"])
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        for name in ("S", "S_teacher"):
            artifact = Path(d) / f"{name}.pt"
            net = UNet(model.seg_width, model.seg_depth)
            net.load_state_dict(saved["state"][name])
            artifact.write_bytes(to_bytes(segmenter_artifact(net, model, {"step": saved["state"]["step"]})))
            results, _ = evaluate(str(artifact), a.data, score_resolution=a.resolution or None)
            rows[name] = {k: results["segmenter"][k] for k in ("iou_strict", "dice_strict", "iou_paper")}
            print(f"{name:<10} step {saved['state']['step']}: " + "  ".join(f"{k} {v:.3f}" for k, v in rows[name].items()),
                  flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"checkpoint": str(path), **rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
