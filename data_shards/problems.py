"""Bad samples: the kinds a reader counts, the counts themselves with rate-limited warnings
(ProblemLog), and the streak of unusable samples in a row after which a reader gives up on a set
(UnusableStreak) instead of spinning through it forever. A bad sample never crashes a run; a set
with no usable sample fails fast, with one line that names what it holds and what was looked for.
"""
from __future__ import annotations

import logging
from collections import Counter

from data_shards.index import DatasetError

PROBLEM_KINDS = ("truncated_shard", "missing_image", "undecodable_image", "missing_mask", "undecodable_mask",
                 "mask_resized")
MAX_CONSECUTIVE_UNUSABLE = 1000   # unusable samples in a row before a reader gives up on the set
WARN_FIRST, WARN_EVERY = 5, 1000    # per kind and process: the first few, then every 1000th

logger = logging.getLogger("data_shards")


class ProblemLog:
    """Counts of bad data by kind (PROBLEM_KINDS) with rate-limited warnings. One per pipeline:
    each DataLoader worker holds its own copy, and `take()` hands over what is new since the last
    call so the counts travel to the training process inside the batches."""

    def __init__(self):
        self.total = dict.fromkeys(PROBLEM_KINDS, 0)
        self._taken = dict(self.total)

    def add(self, kind: str, where: str, detail: object = "") -> None:
        self.total[kind] += 1
        n = self.total[kind]
        if n <= WARN_FIRST or n % WARN_EVERY == 0:
            more = " (further ones counted, warned every 1000th)" if n == WARN_FIRST else ""
            logger.warning("data problem #%d of kind %s: %s%s%s", n, kind, where,
                           f": {str(detail).splitlines()[0]}" if str(detail) else "", more)

    def take(self) -> tuple[int, ...]:
        new = tuple(self.total[k] - self._taken[k] for k in PROBLEM_KINDS)
        self._taken = dict(self.total)
        return new


class UnusableStreak:
    """Unusable samples in a row, with what they held: a reader that meets `limit` of them is
    looking at a set it cannot use (images under another field name, say) and raises, instead of
    spinning through it forever. `wanted` says what the reader looks for, for the message."""

    def __init__(self, url: str, wanted: str, limit: int):
        self.url, self.wanted, self.limit = url, wanted, limit
        self.good()

    def good(self) -> None:
        self.count, self.kinds, self.fields = 0, Counter(), set()

    def bad(self, sample: dict, kind: str) -> None:
        self.count += 1
        self.kinds[kind] += 1
        if len(self.fields) < 50:  # field names repeat; the bound only guards against odd sets
            self.fields.update(k for k in sample if not k.startswith("__"))
        if self.count >= self.limit:
            raise self.error()

    def error(self) -> DatasetError:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items()))
        fields = ", ".join(sorted(self.fields)) or "none"
        return DatasetError(f"{self.url}: {self.count} samples tried in a row, none usable ({kinds}); "
                            f"fields seen: {fields}; the reader looks for {self.wanted}")


def where(sample: dict) -> str:
    """A sample's name in warnings: its key and shard."""
    return f"sample {sample.get('__key__')} in {sample.get('__url__')}"


def unusable(kind: str, sample: dict, problems: ProblemLog, streak: UnusableStreak, detail: object = "") -> None:
    """Count `sample` as a bad sample of `kind` (None, so a decoder can return it as its result)."""
    problems.add(kind, where(sample), detail)
    streak.bad(sample, kind)
