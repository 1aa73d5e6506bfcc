r"""Train DS-ComGAN end to end: stage 1 (disentangling generator), stage 2 (segmenter), evaluation.

On a laptop (local Ray, CPU, built-in synthetic data; 8-35 minutes on 2 cores, see the README):
    python jobs/train.py
With another preset or YAML file, and overrides:
    python jobs/train.py --config tiny stage1.beta=0.5 model.num_categories=8
On a running Ray cluster (see ray_cluster.yaml), data and runs on S3:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train.py --config paper --workers 8 run.use_gpu=true \
        data.train=s3://bucket/cub/train data.eval=s3://bucket/cub/test data.synthetic=false \
        --storage s3://bucket/runs --name cub-paper

Re-running with the same --name continues that run: finished stages are kept, an interrupted
stage resumes from its latest checkpoint. Batch sizes are global (split across --workers) and the
learning rate applies to the global batch; run.mixed_precision=bf16 (CPU/GPU) or fp16 (GPU).
--stage1-only stops after exporting <run>/stage1/generator.pt, which jobs/segment.py takes.
For scheduled runs (cron, CI) against a cluster, see jobs/submit.py.

S3 settings come from the standard AWS environment (AWS_PROFILE, AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL) or an instance role; non-secret options can
also be set in the config: storage.endpoint_url=..., storage.region=..., storage.profile=...
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.cli import OneLineParser, add_run_arguments, run_job  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(
        prog="jobs/train.py", description=__doc__,
        epilog="Every config key can be overridden as section.key=value; see comgan/config.py "
               "(model, stage1, stage2), data_shards/config.py (data, storage) and cluster/config.py (run) "
               "for the keys and their meaning, cluster/configs/ for the presets. Exit codes: 0 done, "
               "1 a stage failed after its restarts (re-run to resume), 2 a mistake in the "
               "command, config, data or storage.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p)
    p.add_argument("--stage1-only", action="store_true",
                   help="stop after stage 1 has exported generator.pt (train segmenters later with jobs/segment.py)")
    return p.parse_intermixed_args(argv)  # key=value overrides may follow the options


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_job(args, stage1_only=args.stage1_only)


if __name__ == "__main__":
    sys.exit(main())
