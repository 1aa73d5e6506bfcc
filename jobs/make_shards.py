"""Write a dataset as WebDataset shards plus manifest.json, the form jobs/train.py reads; or
index plain WebDataset tars where they lie.

    python jobs/make_shards.py CONVERTER [SOURCE] DEST [options]
    python jobs/make_shards.py index URL [--overwrite]

A folder of images, with masks matched by relative path without extension (a/b.jpg <-> a/b.png):
    python jobs/make_shards.py folder photos/ s3://bucket/photos --masks photo_masks/
Images only (Stanford Cars/Dogs, CLEVR-style scenes):
    python jobs/make_shards.py images stanford_cars/cars_train data/cars --resize 128
CUB-200-2011 (images/, segmentations/, images.txt, bounding_boxes.txt, train_test_split.txt),
cropped around each bird as in the paper:
    python jobs/make_shards.py cub CUB_200_2011 s3://bucket/cub/train --split train --crop-bbox
    python jobs/make_shards.py cub CUB_200_2011 s3://bucket/cub/test --split test --crop-bbox
Oxford 102 Flowers (jpg/, segmim/):
    python jobs/make_shards.py flowers flowers102 data/flowers
The built-in synthetic scenes:
    python jobs/make_shards.py synthetic data/synth --count 1000 --resolution 32
Plain WebDataset tars (img2dataset, webdataset's ShardWriter: KEY.jpg + KEY.json, optional
KEY.mask.png) need no conversion: jobs/train.py reads a folder of them, a brace pattern or a .tar
as they are, counting their samples at every start. Indexing them once writes manifest.json
beside them (a pattern's into its folder), copying nothing, so that runs start at once:
    python jobs/make_shards.py index s3://bucket/photos/
    python jobs/make_shards.py index 's3://bucket/photos/part-{000000..000199}.tar'
(quote a brace pattern: the shell would expand it).

DEST is a local folder or any fsspec URL (file://, s3://bucket/prefix; S3 credentials and
endpoint come from the standard AWS environment) that is new or empty: one that holds anything
is refused unless --overwrite, which replaces only manifest.json and the shard names it writes
and deletes only an old set's shards that our own manifest lists. Each shard is uploaded as
soon as it is full; manifest.json is written last. Image files pass through unchanged unless
--crop-bbox or --resize changes their pixels; masks are stored as {0, 255} PNGs. Unreadable files
are skipped with a warning and counted in the summary and the manifest.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.cli import EXIT_INTERRUPTED, EXIT_USER_ERROR, OneLineParser, print_error  # noqa: E402
from comgan.errors import UserError  # noqa: E402
from data_shards.converters import CONVERTERS  # noqa: E402
from data_shards.index import write_index  # noqa: E402
from data_shards.io import redact, redacted  # noqa: E402
from data_shards.progress import Progress, format_duration  # noqa: E402
from data_shards.writer import check_destination, format_size, parse_size, write_shards, write_synthetic  # noqa: E402

NOT_RECORDED = {"converter", "overwrite", "workers", "quiet"}   # options that do not change the output


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {kind.__name__}: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def _size(text):
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("dest", metavar="DEST", help="destination folder or URL (e.g. data/cub, s3://bucket/cub/train)")
    p.add_argument("--samples-per-shard", type=_positive(int), default=1000, metavar="N",
                   help="at most N samples per shard (default: %(default)s)")
    p.add_argument("--shard-bytes", type=_size, default=parse_size("256MB"), metavar="SIZE",
                   help="and at most SIZE bytes per shard: 256MB, 1.5GB, 64MiB, ... (K/M/G = 1000s, "
                        "Ki/Mi/Gi = 1024s; default: 256MB); a new shard starts when either limit is reached")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a DEST that is not empty: manifest.json and the shard-NNNNNN.tar names the new "
                        "set uses are replaced, shards of an old set of ours (listed in its manifest) that the new "
                        "set does not reuse are deleted after the new manifest is written, nothing else is touched "
                        "(without it, a DEST that holds anything is refused)")
    p.add_argument("--quiet", action="store_true", help="no progress lines or warnings, only errors and the summary")


def _source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE", help="the dataset's folder (a local path or a URL)")
    _common(p)
    p.add_argument("--resize", type=_positive(int), metavar="N",
                   help="re-encode images so that the shorter side is N pixels, aspect kept (default: keep pixels)")
    p.add_argument("--limit", type=_positive(int), metavar="N", help="write only the first N samples (for trials)")
    p.add_argument("--shuffle-seed", type=int, default=0, metavar="S",
                   help="write samples in a random order fixed by S (default: %(default)s): the reader only mixes "
                        "~500 neighbouring samples, so class-sorted sources would give one-class batches")
    p.add_argument("--no-shuffle", dest="shuffle_seed", action="store_const", const=None,
                   help="keep the source's order (sorted paths; images.txt order for cub)")
    p.add_argument("--workers", type=_positive(int), default=min(8, os.cpu_count() or 1), metavar="N",
                   help="threads reading and decoding files (default: %(default)s)")


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(prog="jobs/make_shards.py", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="converter", metavar="CONVERTER", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    q = sub.add_parser("folder", formatter_class=fmt, help="a folder of images (recursive), optional masks by stem",
                       description="Every image under SOURCE, recursively (jpg, png, webp, bmp, tif, gif); with "
                                   "--masks, image a/b.jpg gets mask MASKS/a/b.<any image extension>.\n"
                                   "  python jobs/make_shards.py folder photos/ data/photos --masks photo_masks/")
    _source_options(q)
    q.add_argument("--masks", metavar="MASKS",
                   help="folder of masks (any image format; > 127 of grey is foreground, 0/1 masks work too)")

    q = sub.add_parser("images", formatter_class=fmt, help="an images-only folder (Stanford Cars/Dogs, CLEVR)",
                       description="Every image under SOURCE, recursively, without masks.\n"
                                   "  python jobs/make_shards.py images stanford_dogs/Images data/dogs --resize 128")
    _source_options(q)

    q = sub.add_parser("cub", formatter_class=fmt, help="CUB-200-2011",
                       description="CUB-200-2011: SOURCE/images.txt, images/, bounding_boxes.txt, "
                                   "train_test_split.txt, segmentations/ (optional: without it no masks).\n"
                                   "  python jobs/make_shards.py cub CUB_200_2011 data/cub/train --split train "
                                   "--crop-bbox")
    _source_options(q)
    q.add_argument("--split", choices=("train", "test", "all"), default="all",
                   help="which images, by train_test_split.txt (default: %(default)s)")
    q.add_argument("--crop-bbox", action="store_true",
                   help="crop image and mask to a square of side S * max(w, h) (S: --bbox-scale) around the "
                        "bounding box centre, clipped to the image (the paper's pre-processing)")
    q.add_argument("--bbox-scale", type=_positive(float), default=1.5, metavar="S",
                   help="side of the --crop-bbox square relative to the box's longer side (default: %(default)s)")

    q = sub.add_parser("flowers", formatter_class=fmt, help="Oxford 102 Flowers",
                       description="Oxford 102 Flowers: SOURCE/jpg/image_NNNNN.jpg; masks from "
                                   "SOURCE/segmim/segmim_NNNNN.jpg, where a pixel is background if blue > 120, "
                                   "red < 60 and green < 60 (the segmim's painted blue, JPEG noise allowed). "
                                   "Images without a segmim get no mask.\n"
                                   "  python jobs/make_shards.py flowers flowers102 s3://bucket/flowers")
    _source_options(q)

    q = sub.add_parser("synthetic", formatter_class=fmt, help="the built-in synthetic scenes (with exact masks)",
                       description="The built-in seeded synthetic scenes (data_shards/synthetic.py).\n"
                                   "  python jobs/make_shards.py synthetic data/synth --count 1000 --resolution 32")
    _common(q)
    q.add_argument("--count", type=_positive(int), default=1000, help="number of images (default: %(default)s)")
    q.add_argument("--resolution", type=_positive(int), default=32, help="image side in pixels (default: %(default)s)")
    q.add_argument("--styles", type=_positive(int), default=4,
                   help="K foreground and K background styles (default: %(default)s)")
    q.add_argument("--seed", type=int, default=0, help="the set's seed; another seed is another set (default: 0)")

    q = sub.add_parser("index", formatter_class=fmt, help="plain WebDataset tars in place: write their manifest.json",
                       description="Count the samples of plain WebDataset tars (a folder of *.tar, a brace pattern "
                                   "or one .tar) from their headers and write manifest.json beside them (a "
                                   "pattern's into its folder, listing just its shards). Nothing is copied or "
                                   "changed; images sit under jpg, jpeg, png, webp or image.<ext>, masks under "
                                   "mask.png, mask.jpg, mask.jpeg or mask.webp.\n"
                                   "  python jobs/make_shards.py index 's3://bucket/photos/part-{000000..000199}.tar'")
    q.add_argument("url", metavar="URL", help="a folder of .tar files, a brace pattern (quoted) or a .tar, local or URL")
    q.add_argument("--overwrite", action="store_true", help="replace a manifest.json already there")
    q.add_argument("--quiet", action="store_true", help="no progress lines or warnings, only errors and the summary")
    return p.parse_args(argv)


def _recorded_options(args: argparse.Namespace) -> dict:
    """The options as the manifest keeps them: URLs without user:password@ or presigned signatures."""
    return redacted({k: v for k, v in sorted(vars(args).items()) if k not in NOT_RECORDED})


def convert(args: argparse.Namespace) -> dict:
    log = Progress(label=args.converter, enabled=not args.quiet)
    converter = {"name": args.converter, "options": _recorded_options(args)}
    writer_options = dict(samples_per_shard=args.samples_per_shard, shard_bytes=args.shard_bytes,
                          overwrite=args.overwrite, converter=converter, progress=log)
    if args.converter == "synthetic":
        log.total = args.count
        return write_synthetic(args.dest, args.count, args.resolution, args.styles, args.seed, **writer_options)
    extra = {"masks": args.masks} if args.converter == "folder" else \
        {"split": args.split, "crop_bbox": args.crop_bbox, "bbox_scale": args.bbox_scale} if args.converter == "cub" \
        else {}
    source = CONVERTERS[args.converter](args.source, resize=args.resize, limit=args.limit,
                                        shuffle_seed=args.shuffle_seed, workers=args.workers, log=log, **extra)
    log.total = len(source)
    return write_shards(source, args.dest, skipped=source.skipped, **writer_options)


def summary(manifest: dict, dest: str, seconds: float) -> str:
    size, shards = sum(s["bytes"] for s in manifest["shards"]), len(manifest["shards"])
    skipped = manifest.get("skipped") or {}
    why = ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items()))
    return (f"wrote {manifest['num_samples']} samples ({manifest['num_masks']} with masks) in "
            f"{shards} shard{'s' * (shards != 1)}, {format_size(size)}, to {dest} in {format_duration(seconds)}; "
            + (f"skipped {sum(skipped.values())} ({why})" if skipped else "skipped none"))


def index_summary(manifest: dict, written: str, seconds: float) -> str:
    shards, size = len(manifest["shards"]), sum(s["bytes"] for s in manifest["shards"])
    keys = ", ".join([*manifest["image_keys"], *manifest["mask_keys"]])
    return (f"indexed {manifest['num_samples']} samples ({manifest['num_masks']} with masks) in {shards} "
            f"shard{'s' * (shards != 1)}, {format_size(size)}, in {format_duration(seconds)}; fields used: {keys}; "
            f"wrote {written}")


def run_index(args: argparse.Namespace, start: float) -> str:
    # The indexer warns about missing or damaged shards through logging; shown like the converters' warnings.
    logging.basicConfig(format="warning: %(message)s", level=logging.ERROR if args.quiet else logging.WARNING)
    manifest, written = write_index(args.url, overwrite=args.overwrite,
                                    progress=Progress(label="index", unit="shards", enabled=not args.quiet))
    return index_summary(manifest, written, time.monotonic() - start)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    try:
        if args.converter == "index":
            print(redact(run_index(args, start)))
            return 0
        check_destination(args.dest, args.overwrite)  # before the source is listed (minutes); write_shards again
        manifest = convert(args)
    except (UserError, OSError) as e:  # OSError: storage the user has to fix
        print_error(e)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if args.converter == "index":
            print("interrupted: no manifest.json was written", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"interrupted: re-run the command with --overwrite to write {redact(args.dest)} (an unfinished "
              "write leaves no manifest.json, so nothing reads it)", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(redact(summary(manifest, args.dest, time.monotonic() - start)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
