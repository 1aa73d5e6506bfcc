r"""Score a segmenter artifact on a labelled shard set, next to GrabCut and trivial baselines.

    python jobs/evaluate.py --segmenter runs/default/stage2/segmenter.pt --data data_shards/synthetic/eval
    python jobs/evaluate.py --segmenter s3://bucket/runs/horses/stage2/segmenter.pt \
        --data s3://bucket/horses/eval --resolution 128 --grabcut --out s3://bucket/runs/horses/eval128.json

Prints mean IoU and Dice, strict (the prediction is the foreground) and in the paper's convention
(each image scored as the better of the prediction and its complement), for the segmenter and
for the baselines on the same images in the same geometry: all-foreground, a centred box of the
mean foreground area and, with --grabcut, GrabCut initialised with a rectangle inset 5 %.
--resolution scores at another size than the segmenter's (its masks are upsampled): GrabCut
needs about 128 px. --out writes the results as JSON and a PNG grid beside it.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.cli import USER_ERRORS, EXIT_USER_ERROR  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="jobs/evaluate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Exit codes: 0 done, 2 a mistake in the arguments, artifact, data or storage.")
    p.add_argument("--segmenter", required=True, metavar="URI", help="a segmenter.pt (path or URL)")
    p.add_argument("--data", required=True, metavar="URL", help="shards with images and ground-truth masks")
    p.add_argument("--resolution", type=int, default=0, help="score at this size (default: the segmenter's)")
    p.add_argument("--grabcut", action="store_true", help="also score GrabCut (OpenCV) on the same images")
    p.add_argument("--threshold", type=float, default=0.5, help="mask probability threshold (default: %(default)s)")
    p.add_argument("--batch", type=int, default=32, help="images per forward pass (default: %(default)s)")
    p.add_argument("--out", metavar="URL", help="write results JSON here, and <out minus .json>_grid.png")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    from cluster.evaluate import evaluate, format_table, save_report

    try:
        if a.resolution < 0 or a.batch < 1 or not 0 < a.threshold < 1:
            raise ValueError("--resolution must be >= 0, --batch >= 1 and --threshold in (0, 1)")
        results, grid = evaluate(a.segmenter, a.data, batch_size=a.batch, threshold=a.threshold,
                                 score_resolution=a.resolution or None, grabcut=a.grabcut)
        print(format_table(results))
        if a.out:
            grid_url = (a.out[:-5] if a.out.endswith(".json") else a.out) + "_grid.png"
            save_report(results, grid, a.out, grid_url)
            print(f"wrote {a.out} and {grid_url}")
    except (*USER_ERRORS, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
