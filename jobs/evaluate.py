r"""Score a segmenter artifact on a labelled shard set, next to GrabCut and trivial baselines, and
(optionally) a generator's FID and Inception Score.

    python jobs/evaluate.py --segmenter runs/default/stage2/segmenter.pt --data data_shards/synthetic/eval
    python jobs/evaluate.py --segmenter s3://bucket/runs/horses/stage2/segmenter.pt \
        --data s3://bucket/horses/eval --resolution 128 --grabcut --out s3://bucket/runs/horses/eval128.json
    python jobs/evaluate.py --generator runs/default/stage1/generator.pt --data data_shards/synthetic/train \
        --inception ~/weights/inception-2015-12-05.pt --fid-samples 10000

Prints mean IoU and Dice, strict (the prediction is the foreground) and in the paper's convention
(each image scored as the better of the prediction and its complement), for the segmenter and
for the baselines on the same images in the same geometry: all-foreground, a centred box of the
mean foreground area and, with --grabcut, GrabCut initialised with a rectangle inset 5 %.
--resolution scores at another size than the segmenter's (its masks are upsampled): GrabCut
needs about 128 px. --out writes the results as JSON (means and every image's scores under
"per_image") and a PNG grid beside it; an existing report is replaced only with --overwrite.
--workers N scores N parts of the set on Ray tasks (a local cluster, or the one RAY_ADDRESS names).

FID and IS (--generator with --inception): the generator's composites for --fid-samples seeded
codes against the first --fid-real images of --data (read at the generator's resolution; masks
not needed), through StyleGAN2-ADA's TorchScript Inception, inception-2015-12-05.pt. Nothing is
downloaded: fetch that file once (cluster/fidelity.py says from where) and give its path or URL.
FID depends on the sample counts: compare runs at the same counts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.cli import EXIT_USER_ERROR, OneLineParser, print_error
from comgan.errors import UserError
from data_shards.io import check_file_target, redact, redacted, url_exists


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(prog="jobs/evaluate.py", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter,
                      epilog="Exit codes: 0 done, 2 a mistake in the arguments, artifact, data or storage, "
                             "or an existing report without --overwrite.")
    p.add_argument("--segmenter", metavar="URI", help="a segmenter.pt (path or URL) to score on --data's masks")
    p.add_argument("--data", required=True, metavar="URL",
                   help="shards with images and ground-truth masks (for FID alone, masks are not needed)")
    p.add_argument("--resolution", type=int, default=0, help="score at this size (default: the segmenter's)")
    p.add_argument("--grabcut", action="store_true", help="also score GrabCut (OpenCV) on the same images")
    p.add_argument("--flip", action="store_true",
                   help="test-time flip: average each image's mask with its mirror image's (2x the compute)")
    p.add_argument("--colour-refine", action="store_true",
                   help="refine each mask by its image's own colours at the scoring size (comgan/refine.py)")
    p.add_argument("--threshold", type=float, default=0.5, help="mask probability threshold (default: %(default)s)")
    p.add_argument("--batch", type=int, default=32, help="images per forward pass (default: %(default)s)")
    p.add_argument("--workers", type=int, default=0,
                   help="score the segmenter on this many Ray tasks, each a part of the shards (default: 0, in this process)")
    p.add_argument("--out", metavar="URL", help="write results JSON here, and <out minus .json>_grid.png")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a report (JSON or grid) already at --out; a folder there is never replaced")
    q = p.add_argument_group("FID and Inception Score of a generator")
    q.add_argument("--generator", metavar="URI", help="a generator.pt (path or URL)")
    q.add_argument("--inception", metavar="URI", help="the TorchScript detector inception-2015-12-05.pt (path or URL)")
    q.add_argument("--fid-samples", type=int, default=5000, help="generated images (default: %(default)s)")
    q.add_argument("--fid-real", type=int, default=50000, help="real images at most (default: %(default)s)")
    return p.parse_args(argv)


def check_args(a: argparse.Namespace) -> None:
    if not a.segmenter and not a.generator:
        raise ValueError("nothing to evaluate: give --segmenter, or --generator with --inception, or both")
    if a.generator and not a.inception:
        raise ValueError("--generator is scored by FID and IS, which need --inception (the file inception-2015-12-05.pt)")
    if a.resolution < 0 or a.batch < 1 or not 0 < a.threshold < 1 or a.workers < 0:
        raise ValueError("--resolution and --workers must be >= 0, --batch >= 1 and --threshold in (0, 1)")
    check_resolution(a.resolution)
    if a.fid_samples < 2 or a.fid_real < 2:
        raise ValueError("--fid-samples and --fid-real must be >= 2")
    check_out(a)


def check_resolution(resolution: int) -> None:
    """Every image is read at this size: the bound an artifact's resolution has, so that a typo
    is a line, not minutes of allocating until the OOM killer ends the job."""
    from comgan.config import MAX_RESOLUTION

    if resolution > MAX_RESOLUTION:
        raise ValueError(f"--resolution must be <= {MAX_RESOLUTION} (the largest an artifact may have), "
                         f"got {resolution}")


def check_out(a: argparse.Namespace) -> None:
    """Before minutes of scoring: refuse a report that cannot be written (a folder at --out, which
    --overwrite does not replace, or a file above it), and one that would replace a report without
    --overwrite."""
    if not a.out:
        return
    targets = [a.out, grid_url(a.out)] if a.segmenter else [a.out]  # the grid comes with a segmenter only
    for url in targets:
        try:
            check_file_target(url)
        except UserError as e:
            raise ValueError(f"--out: {e}") from None
    existing = [url for url in targets if url_exists(url)]
    if existing and not a.overwrite:
        raise ValueError(f"{existing[0]} already exists; use --overwrite to replace it")


def main(argv=None) -> int:
    a = parse_args(argv)
    from cluster.evaluate import evaluate, format_table
    from cluster.fidelity import fidelity
    from cluster.storage import absolute_url

    try:
        check_args(a)
        results, grid = {}, None
        if a.segmenter:
            results, grid = evaluate(absolute_url(a.segmenter), absolute_url(a.data), batch_size=a.batch,
                                     threshold=a.threshold, score_resolution=a.resolution or None,
                                     grabcut=a.grabcut, workers=a.workers, flip=a.flip,
                                     colour=a.colour_refine)
            print(format_table(results))
        if a.generator:
            results["fidelity"] = f = fidelity(absolute_url(a.generator), absolute_url(a.data), absolute_url(a.inception), num_generated=a.fid_samples,
                                               num_real=a.fid_real, batch=a.batch)
            print(f"FID {f['fid']:.2f}  IS {f['is_mean']:.2f} ± {f['is_std']:.2f}  ({f['num_generated']} generated vs "
                  f"{f['num_real']} real images at {f['resolution']} px, {f['seconds']:.0f} s)")
        if a.out:
            write_results(results, grid, a.out)
    except (UserError, ValueError, FileNotFoundError) as e:
        print_error(e)
        return EXIT_USER_ERROR
    return 0


def write_results(results: dict, grid, out: str) -> None:
    from cluster.evaluate import save_report
    from data_shards.io import write_bytes

    if grid is None:
        write_bytes(out, (json.dumps(redacted(results), indent=2) + "\n").encode())
        print(redact(f"wrote {out}"))
        return
    save_report(results, grid, out, grid_url(out))
    print(redact(f"wrote {out} and {grid_url(out)}"))


def grid_url(out: str) -> str:
    return out.removesuffix(".json") + "_grid.png"


if __name__ == "__main__":
    sys.exit(main())
