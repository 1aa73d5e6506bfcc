r"""Segment your own photos with a trained segmenter: one mask PNG per photo, at the photo's size.

    python jobs/segment_images.py --photos ~/Pictures/horses --segmenter runs/default/stage2/segmenter.pt \
        --out ~/Pictures/horses-masks --overlays
    python jobs/segment_images.py --photos s3://bucket/photos --out s3://bucket/masks \
        --segmenter s3://bucket/runs/cub-paper/stage2/segmenter.pt --workers 4
On a running Ray cluster, one worker per GPU:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/segment_images.py --photos s3://bucket/photos --out s3://bucket/masks \
        --segmenter s3://bucket/runs/cub-paper/stage2/segmenter.pt --workers 8 --gpus-per-worker 1

--photos is a folder or URL prefix (s3://...): every .jpg, .jpeg, .png and .webp under it, in any
sub-folder, of any size; hidden files are left out. Each photo is shown to the segmenter as its
viewers show it (EXIF orientation applied), resized to the segmenter's square resolution; the mask
probabilities are upsampled back to the photo's own size and thresholded at --threshold. For a
photo <photos>/<dir>/<name>.<ext>, --out gets:
  <dir>/<name>.png           the mask: 8-bit grey, 0 background / 255 foreground, the photo's size
  overlays/<dir>/<name>.jpg  with --overlays: the photo with its background dimmed
  segment_report.json        settings, photos/s, and every photo segmented (size, foreground
                             fraction) or skipped (why)
Files that are not readable images (damaged, truncated, another format under an image name) are
named in a warning, skipped and listed in the report. --out may not lie inside --photos, and
existing outputs are replaced only with --overwrite. The report is written as the job goes (every
100 photos, "complete": false until the end), so an interrupted run can be continued with --resume:
photos whose mask (and, with --overlays, overlay) is already at --out are not done again.

--workers 0 (the default) runs here, --batch photos per forward pass on --device, with reading
and decoding ahead of the network in --io-threads threads. --workers N splits the photos into
chunks for N Ray workers, each loading the segmenter once: on the cluster at RAY_ADDRESS (set by
`ray job submit`), else on a local Ray cluster started for the job; on a multi-node cluster keep
photos and masks on s3://. Workers a local cluster can never hold are refused at once (one line
naming what is missing); on a cluster at RAY_ADDRESS, whose autoscaler may add nodes, the job
waits at most --placement-timeout seconds for all workers to start, then gives up with that line.
The segmenter's file (segmenter.pt, exported by jobs/train.py or jobs/segment.py) may be a path
or any URL. S3 settings come from the standard AWS environment
(AWS_PROFILE, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL).
"""
from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.cli import EXIT_INTERRUPTED, EXIT_STAGE_FAILED, EXIT_USER_ERROR, OneLineParser, int_at_least, print_error
from comgan.errors import UserError
from data_shards.io import redact


def _amount(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def _probability(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(prog="jobs/segment_images.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="Exit codes: 0 done (some photos may have been skipped: see the report), 1 no photo "
                      "could be segmented or a Ray worker failed, 2 a mistake in the command, a missing or "
                      "wrong artifact, no photos, existing output without --overwrite, storage that "
                      "cannot be used, or Ray workers the cluster cannot hold (within --placement-timeout).")
    p.add_argument("--photos", required=True, metavar="URL", help="folder or URL prefix of the photos (recursive)")
    p.add_argument("--segmenter", required=True, metavar="URI", help="a segmenter.pt: a path or URL")
    p.add_argument("--out", required=True, metavar="URL", help="folder or URL prefix for the masks, overlays and report")
    p.add_argument("--overlays", action="store_true", help="also write overlays/<name>.jpg: each photo, background dimmed")
    p.add_argument("--threshold", type=_probability, default=0.5,
                   help="foreground where the mask probability is above this (default: %(default)s)")
    p.add_argument("--flip", action="store_true",
                   help="test-time flip: average each photo's mask with its mirror image's (2x the network's compute)")
    p.add_argument("--colour-refine", action="store_true",
                   help="refine each mask by its photo's own colours, at the segmenter's resolution (comgan/refine.py)")
    p.add_argument("--batch", "--batch-size", type=int_at_least(1), default=32, metavar="B",
                   help="photos per forward pass (default: %(default)s)")
    p.add_argument("--device", default="auto",
                   help="torch device with --workers 0: auto (cuda if available), cpu, cuda, cuda:1, ... "
                        "(default: %(default)s)")
    p.add_argument("--io-threads", type=int_at_least(1), default=4, metavar="T",
                   help="threads reading and decoding photos ahead of the network, and as many writing masks "
                        "(default: %(default)s)")
    p.add_argument("--workers", type=int_at_least(0), default=0, metavar="N",
                   help="Ray workers; 0 runs in this process without Ray (default: %(default)s)")
    p.add_argument("--cpus-per-worker", type=_amount, default=1, metavar="C",
                   help="CPUs Ray reserves per worker (default: %(default)s)")
    p.add_argument("--gpus-per-worker", type=_amount, default=0, metavar="G",
                   help="GPUs Ray reserves per worker, e.g. 1, or 0.5 for two workers per GPU; workers run on CUDA "
                        "when > 0, else on CPU (default: %(default)s)")
    p.add_argument("--placement-timeout", type=_seconds, default=1800, metavar="S",
                   help="seconds the Ray workers may take to start (be placed on the cluster and load the "
                        "segmenter) before the job gives up; a request the cluster can never hold is refused "
                        "at once on a local cluster (default: %(default)s)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--overwrite", action="store_true", help="replace masks, overlays and a report already at --out")
    again.add_argument("--resume", action="store_true",
                       help="continue an interrupted run: photos whose mask (and overlay) is already at --out are "
                            "not done again, and the report lists them")
    p.add_argument("--quiet", action="store_true", help="no progress line (warnings and the summary still print)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from cluster.photo_segmenter import Settings
    from cluster.segment_images import SegmentFailed, segment_images
    from cluster.segment_plan import summary

    settings = Settings(threshold=args.threshold, batch=args.batch, overlays=args.overlays, device=args.device,
                        io_threads=args.io_threads, flip=args.flip,
                        colour=args.colour_refine)
    try:
        report = segment_images(args.photos, args.segmenter, args.out, settings, workers=args.workers,
                                overwrite=args.overwrite, cpus_per_worker=args.cpus_per_worker,
                                gpus_per_worker=args.gpus_per_worker, progress=not args.quiet,
                                placement_timeout=args.placement_timeout, resume=args.resume)
    except (UserError, OSError) as e:  # OSError: storage the user has to fix
        print_error(e)
        return EXIT_USER_ERROR
    except SegmentFailed as e:
        print_error(e)
        return EXIT_STAGE_FAILED
    except KeyboardInterrupt:
        print("interrupted: masks written so far are kept, and the report lists them; re-run with --resume "
              "to continue, or --overwrite to redo them all", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(redact(summary(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
