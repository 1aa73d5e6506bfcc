"""TensorBoard event files (tensorboardX) under the run directory, local or remote.

tensorboardX writes to a local folder; for a remote run directory the folder is a temporary one
that is copied up on every flush, so a crashed run loses at most one logging interval. An upload
that fails (S3 throttling, a network blip) never stops training: the event files stay in the local
folder, one warning says so, and the next flush (or close) uploads them again.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile

import numpy as np
from tensorboardX import SummaryWriter

from data_shards.io import filesystem, is_local_path, redact

logger = logging.getLogger("comgan.tensorboard")


class RunWriter:
    def __init__(self, url: str):
        self.url = url
        self.remote = not is_local_path(url)
        local = tempfile.mkdtemp(prefix="comgan-tb-") if self.remote else url.removeprefix("file://")
        os.makedirs(local, exist_ok=True)
        self.local = local
        self.writer = SummaryWriter(local, flush_secs=30)
        self.upload_failing = False  # the last upload failed (warned once, retried on every flush)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def image(self, tag: str, grid_chw, step: int) -> None:
        self.writer.add_image(tag, np.asarray(grid_chw), step, dataformats="CHW")

    def hparams(self, params: dict, metrics: dict[str, float], name: str) -> None:
        """One entry of TensorBoard's HPARAMS tab (its own sub-folder `name`)."""
        self.writer.add_hparams(params, metrics, name=name)

    def flush(self) -> None:
        self.writer.flush()
        self._upload()

    def close(self) -> None:
        self.writer.close()
        if self._upload() and self.remote:
            shutil.rmtree(self.local, ignore_errors=True)
        elif self.remote:  # kept: the only copy of what did not reach the run directory
            logger.warning(redact(f"TensorBoard: the event files that could not be uploaded to {self.url} "
                                  f"are kept in {self.local}"))

    def _upload(self) -> bool:
        """Copy the local event files up; True when they are all there. A failure is warned about
        once (until an upload succeeds again) and never raised: losing a logging interval must not
        cost the worker group a restart."""
        if not self.remote:
            return True
        try:
            fs, path = filesystem(self.url)
            fs.put(self.local.rstrip("/") + "/", path, recursive=True)
        except Exception as e:  # noqa: BLE001 -- OSError, botocore and aiohttp errors alike: retried next flush
            if not self.upload_failing:
                first = (str(e).strip().splitlines() or [""])[0][:200]
                logger.warning(redact(f"TensorBoard: uploading the event files to {self.url} failed "
                                      f"({type(e).__name__}: {first}); training goes on and every flush retries"))
            self.upload_failing = True
            return False
        if self.upload_failing:
            logger.info(redact(f"TensorBoard: the event files reached {self.url} again"))
        self.upload_failing = False
        return True
