"""Train DS-ComGAN end to end: stage 1 (disentangling generator), stage 2 (segmenter), evaluation.

On a laptop (local Ray, CPU, built-in synthetic data, about 10 minutes):
    python jobs/train.py
With another preset or YAML file, and overrides:
    python jobs/train.py --config tiny stage1.beta=0.5 model.num_categories=8
On a running Ray cluster (see ray_cluster.yaml), data and runs on S3:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train.py --config paper --workers 8 run.use_gpu=true \
        data.train=s3://bucket/cub/train data.eval=s3://bucket/cub/test data.synthetic=false \
        --storage s3://bucket/runs --name cub-paper

Re-running with the same --name continues that run: finished stages are kept, an interrupted
stage resumes from its latest checkpoint.

S3 settings come from the standard AWS environment (AWS_PROFILE, AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL) or an instance role; non-secret options can
also be set in the config: storage.endpoint_url=..., storage.region=..., storage.profile=...
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from comgan.artifacts import ArtifactError  # noqa: E402
from comgan.config import ConfigError, load_config  # noqa: E402
from data_shards.io import StorageError  # noqa: E402
from data_shards.reader import DatasetError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="jobs/train.py", description=__doc__,
        epilog="Every config key can be overridden as section.key=value; see comgan/config.py for "
               "the keys and their meaning, comgan/configs/ for the presets.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. stage1.beta=0.5 stage2.lam=2 model.num_categories=10")
    p.add_argument("--config", default="default",
                   help="preset name (default, tiny, paper) or path to a YAML file (default: %(default)s)")
    p.add_argument("--workers", type=int, help="number of Ray Train workers (data-parallel processes)")
    p.add_argument("--storage", help="where runs are kept: a folder or URL such as s3://bucket/runs (default: runs)")
    p.add_argument("--name", help="run name; the same name resumes that run (default: the config's name)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides)
    for flag, key in ((args.workers, "run.workers"), (args.storage, "run.storage"), (args.name, "run.name")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    try:
        cfg = load_config(args.config, overrides)
        if args.print_config:
            print(cfg.to_yaml(), end="")
            return 0
        from cluster.pipeline import run_pipeline  # imports ray: keep --help and config errors fast
        run_pipeline(cfg)
    except (ConfigError, DatasetError, ArtifactError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume from the latest checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
