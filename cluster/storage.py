"""What a run directory contains, in one place (docs/DESIGN.md section 6), on any fsspec URL.

<storage>/<run>/config.yaml, stage1/ (Ray Train checkpoints + generator.pt), stage2/
(checkpoints + segmenter.pt), tensorboard/, eval.json, eval_grid.png, summary.json, and
stage1_collapsed/attempt<k>/ for stage-1 attempts the watchdog found trivial (run.collapse_restarts).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from comgan.artifacts import ArtifactError
from data_shards.io import configure_s3, join_url, read_bytes, url_exists

from .config import Config


def configure_storage(cfg: Config) -> None:
    """Apply the config's explicit S3 options in this process: the driver and every worker."""
    st = cfg.storage
    configure_s3(endpoint_url=st.endpoint_url, region=st.region, profile=st.profile, anonymous=st.anonymous)


def absolute_url(url: str) -> str:
    """Ray wants absolute local paths; URLs with a scheme pass through unchanged."""
    if "://" in url:
        return url
    return os.path.abspath(os.path.expanduser(url))


@dataclass(frozen=True)
class RunLayout:
    storage: str
    name: str

    @property
    def root(self) -> str:
        return join_url(absolute_url(self.storage), self.name)

    def path(self, *parts: str) -> str:
        return join_url(self.root, *parts)

    @property
    def config(self) -> str:
        return self.path("config.yaml")

    def stage_dir(self, stage: str) -> str:
        return self.path(stage)

    @property
    def generator(self) -> str:
        return self.path("stage1", "generator.pt")

    @property
    def segmenter(self) -> str:
        return self.path("stage2", "segmenter.pt")

    def tensorboard(self, stage: str) -> str:
        return self.path("tensorboard", stage)

    def collapsed(self, attempt: int) -> str:
        """Where stage-1 attempt `attempt` (1, 2, ...) is set aside once the watchdog found it trivial."""
        return self.path("stage1_collapsed", f"attempt{attempt}")

    @property
    def eval_json(self) -> str:
        return self.path("eval.json")

    @property
    def summary(self) -> str:
        """Stage metrics (throughput, mask health, sync check), evaluation and wall time."""
        return self.path("summary.json")

    @property
    def eval_grid(self) -> str:
        return self.path("eval_grid.png")


def read_artifact(url: str, kind: str) -> bytes:
    """The bytes of a stored artifact ("generator", "segmenter"), or one ArtifactError line naming
    what is wrong with the path: nothing there, or a folder."""
    if not url_exists(url):
        raise ArtifactError(f"{kind} {url} does not exist")
    try:
        return read_bytes(url)
    except (IsADirectoryError, FileNotFoundError):
        raise ArtifactError(f"{kind} {url} is not a file") from None
