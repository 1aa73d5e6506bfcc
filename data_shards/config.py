"""The data layer's settings: which shards to read, how to read them, and the S3 options every
byte of a run goes through. Plain dataclasses; the run config (cluster/config.py) holds them as
its `data` and `storage` sections, and each `validate()` raises ValueError with one line."""
from __future__ import annotations

from dataclasses import dataclass

# The folders (relative to the working directory, as the defaults below and the tiny preset's
# paths are) where data.synthetic may write the built-in synthetic set. Anywhere else a path
# without shards is a mistake to report, not a place to fill with synthetic images.
SYNTHETIC_HOMES = ("data_shards/synthetic", "data_shards/tiny")


@dataclass
class DataConfig:
    train: str = "data_shards/synthetic/train"  # training shards (folder or URL); images only are used
    eval: str = "data_shards/synthetic/eval"    # held-out shards with ground-truth masks
    eval_resolution: int = 0    # score masks at this size (predictions upsampled); 0: the model's
    eval_grabcut: bool = False  # also score GrabCut (OpenCV) on the same images; best at >= 128 px
    # Write the built-in synthetic set to `train`/`eval` if missing, only inside SYNTHETIC_HOMES;
    # elsewhere `python jobs/make_shards.py synthetic URL` writes it, explicitly.
    synthetic: bool = True
    synthetic_train_size: int = 10000  # 800 steps of 32 see each image about 2.5 times
    synthetic_eval_size: int = 500     # its held-out images with masks: what a run is scored on
    synthetic_styles: int = 4   # K foreground and K background styles
    samples_per_shard: int = 1000      # images per tar shard of the synthetic set (a shard is one file or object)
    # DataLoader processes per training worker, decoding the next batches while a step runs; 0 decodes
    # in the training process, which can pay on a machine with as few cores as workers.
    loader_workers: int = 1
    hflip: bool = True          # random horizontal flips of real images

    def validate(self) -> None:
        if self.loader_workers < 0:
            raise ValueError(f"data.loader_workers must be >= 0, got {self.loader_workers}")
        if self.synthetic and min(self.synthetic_train_size, self.synthetic_eval_size, self.synthetic_styles) < 1:
            raise ValueError("data.synthetic_train_size, synthetic_eval_size and synthetic_styles must be >= 1")
        if self.eval_resolution < 0:
            raise ValueError(f"data.eval_resolution must be >= 0 (0: the model's), got {self.eval_resolution}")
        if self.samples_per_shard < 1:
            raise ValueError(f"data.samples_per_shard must be >= 1, got {self.samples_per_shard}")


@dataclass
class StorageConfig:
    # Explicit, non-secret S3 options for data and runs; empty = the standard AWS environment and
    # config files decide (AWS_ENDPOINT_URL, AWS_REGION, AWS_PROFILE, ~/.aws, instance roles).
    # Credentials have no keys here on purpose: they never belong in a config that is saved.
    endpoint_url: str = ""      # S3-compatible server, e.g. http://minio.internal:9000
    region: str = ""            # e.g. eu-west-1
    profile: str = ""           # a named profile from ~/.aws/config
    anonymous: bool = False     # unsigned requests, for public buckets

    def validate(self) -> None:
        endpoint = self.endpoint_url
        if endpoint and not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"storage.endpoint_url must start with http:// or https://, got {endpoint!r}")
        if "@" in endpoint.split("://", 1)[-1]:
            raise ValueError("storage.endpoint_url must not carry credentials; use the AWS environment or a profile")
