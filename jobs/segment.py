"""Train the stage-2 segmenter alone, from a stage-1 generator exported by another run, then
evaluate it on the held-out set.

    python jobs/segment.py --generator runs/default/stage1/generator.pt
    python jobs/segment.py --generator s3://bucket/runs/cub-paper/stage1/generator.pt --config paper \\
        data.train=s3://bucket/cub/train data.eval=s3://bucket/cub/test data.synthetic=false \\
        stage2.lam=4 --storage s3://bucket/runs --name cub-paper-lam4

The generator artifact (generator.pt: G_ema and its architecture) may be a local path or any URL.
The config must describe the same model as the run that exported it (give that run's --config and
model overrides): an artifact of another resolution, N or width, or a file that is not a
generator, is refused before any worker starts, naming the key and both values. The run folder
(default name: <config>-segment) gets stage2/ with checkpoints and segmenter.pt, tensorboard/ and
eval.json; re-running the same command resumes it. jobs/train.py runs both stages in one go.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.cli import OneLineParser, add_run_arguments, run_job  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(
        prog="jobs/segment.py", description=__doc__,
        epilog="Exit codes: 0 done, 1 the stage failed after its restarts (re-run to resume), "
               "2 a mistake in the command, config, artifact, data or storage.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", required=True, metavar="URI",
                   help="the stage-1 artifact to learn from: a path or URL to a generator.pt")
    add_run_arguments(p, default_name="<config>-segment")
    return p.parse_intermixed_args(argv)  # key=value overrides may follow the options


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_job(args, extra={"stage2.generator": args.generator},
                   default_name=lambda cfg: f"{cfg.preset}-segment")


if __name__ == "__main__":
    sys.exit(main())
