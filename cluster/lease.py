"""One run, one writer: a lease on the run folder, held by the driver that trains the run.

<storage>/<run>/driver_lease.json names its holder (owner id, host, pid, started, heartbeat; times
in seconds since the epoch). The driver takes it before it writes anything into the run folder,
renews its heartbeat from a daemon thread every HEARTBEAT_SECONDS, and removes it when the run
ends, also on an error or Ctrl-C. A second driver started with the same --name finds a live
lease and stops at once, naming the holder. A lease whose heartbeat is older than
STALE_AFTER_SECONDS (its driver was killed without cleanup: kill -9, the OOM killer, a lost head
node), or whose holder is a process of this host that no longer exists, is taken over with a
warning.

It works on any fsspec store through data_shards.io, and therefore with the limits of an object
store: there is no atomic create-if-absent there in general (S3 only has it as a conditional PUT
that fsspec does not expose). So a driver writes its lease, waits SETTLE_SECONDS, reads it back
and checks that it still holds it: when two drivers start at the same moment, the last writer
wins and the other one stops. That is only safe while the gap between one driver's check and its
write is far shorter than SETTLE_SECONDS (it is milliseconds) and the store reads its own writes
(S3 has been strongly consistent since 2020; local files are). Heartbeats compare wall clocks of
different hosts: STALE_AFTER_SECONDS is long enough for ordinary clock skew.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Callable

from comgan.errors import UserError
from data_shards.io import join_url, read_bytes, remove_url, write_bytes
from data_shards import progress

LEASE_FILE = "driver_lease.json"
HEARTBEAT_SECONDS = 30.0     # how often the holder renews its heartbeat
STALE_AFTER_SECONDS = 300.0  # a heartbeat older than this: its driver is gone, the lease may be taken over
SETTLE_SECONDS = 2.0         # write, wait this long, read back: the last writer wins (see above)


class RunLeased(UserError):
    """Another driver holds the run's lease (or took it over): this one must not write the run."""


def lease_url(run_root: str) -> str:
    return join_url(run_root, LEASE_FILE)


def warn(message: str) -> None:
    progress.tell(f"warning: {message}")


def read_lease(url: str) -> dict | None:
    """The lease record at `url`; None when there is none, {} when it cannot be read (a torn or
    foreign file: treated as stale)."""
    try:
        record = json.loads(read_bytes(url))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or cannot tell: assume it lives)
    return True


def is_live(record: dict, now: float, stale_after: float = STALE_AFTER_SECONDS) -> bool:
    """Whether the lease's holder must be presumed to be still writing the run."""
    heartbeat = record.get("heartbeat")
    if not isinstance(heartbeat, (int, float)) or now - heartbeat > stale_after:
        return False
    pid = record.get("pid")
    if record.get("host") == socket.gethostname() and isinstance(pid, int) and pid != os.getpid():
        return _pid_alive(pid)  # a driver of this machine that died: no need to wait for its heartbeat to age
    return True


def _when(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "an unknown time"
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(record: dict, now: float | None = None) -> str:
    """`host build-3, pid 4242, since 2026-01-31 02:00:00 UTC (last heartbeat 12 s ago)`."""
    now = time.time() if now is None else now
    heartbeat = record.get("heartbeat")
    age = f"{now - heartbeat:.0f} s ago" if isinstance(heartbeat, (int, float)) else "unknown"
    return (f"host {record.get('host', '?')}, pid {record.get('pid', '?')}, since {_when(record.get('started'))} "
            f"(last heartbeat {age})")


class RunLease:
    """A lease this process holds; use `acquire` (or `hold`) to get one. As a context manager it
    renews its heartbeat while the block runs and releases the lease when the block ends."""

    def __init__(self, url: str, record: dict, heartbeat_seconds: float = HEARTBEAT_SECONDS,
                 say: Callable[[str], None] = warn):
        self.url, self.record, self.heartbeat_seconds, self.say = url, record, heartbeat_seconds, say
        self.lost_to: dict | None = None  # the record of the driver that took the lease over, if one did
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def owner(self) -> str:
        return self.record["owner"]

    def renew(self, now: float | None = None) -> bool:
        """Write a fresh heartbeat; False (and the lease is lost) when another driver took it over."""
        if self.lost_to is not None:
            return False
        current = read_lease(self.url)
        if current and current.get("owner") != self.owner:
            self.lost_to = current
            self.say(f"run lease {self.url} was taken over by another driver ({describe(current)}): "
                     f"this driver no longer holds the run")
            return False
        self.record = {**self.record, "heartbeat": time.time() if now is None else now}
        write_bytes(self.url, _encode(self.record))
        return True

    def check(self) -> None:
        """Raise RunLeased when another driver has taken the lease over (this one was presumed dead)."""
        if self.lost_to is not None:
            raise RunLeased(f"{self.url}: another driver took this run over ({describe(self.lost_to)}) while this "
                            f"one was not renewing its lease (paused or cut off for over "
                            f"{STALE_AFTER_SECONDS:.0f} s); stopping so that the run has one writer")

    def start_heartbeat(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="comgan-run-lease", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                if not self.renew():
                    return
            except Exception as e:  # a storage hiccup: the next beat tries again, well before the lease ages
                self.say(f"could not renew the run lease {self.url}: {type(e).__name__}: {e}")

    def release(self) -> None:
        """Stop the heartbeat and remove the lease, if this driver still holds it. Never raises:
        it runs while another error may be on its way to the user."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            current = read_lease(self.url)
            if current is not None and current.get("owner") == self.owner:
                remove_url(self.url)
        except Exception as e:
            self.say(f"could not release the run lease {self.url}: {type(e).__name__}: {e}")

    def __enter__(self) -> "RunLease":
        self.start_heartbeat()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _encode(record: dict) -> bytes:
    return (json.dumps(record, indent=2) + "\n").encode()


def acquire(run_root: str, settle: float = SETTLE_SECONDS, stale_after: float = STALE_AFTER_SECONDS,
            heartbeat_seconds: float = HEARTBEAT_SECONDS, say: Callable[[str], None] = warn) -> RunLease:
    """Take the lease on the run folder `run_root`, or raise RunLeased naming its live holder."""
    url = lease_url(run_root)
    current = read_lease(url)
    now = time.time()
    if current is not None and is_live(current, now, stale_after):
        raise RunLeased(f"run {run_root} is being trained by another driver: {describe(current, now)}. One run has "
                        f"one writer: wait for that driver to end or stop it, or use another --name (if it was "
                        f"killed, its lease expires {stale_after:.0f} s after its last heartbeat)")
    if current is not None:
        say(f"taking over the stale lease of run {run_root}: {describe(current, now) if current else 'unreadable'}")
    record = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
              "started": now, "heartbeat": now}
    write_bytes(url, _encode(record))
    # No atomic create-if-absent on object stores: wait, read back, and stop unless this write won.
    time.sleep(settle)
    back = read_lease(url)
    if not back or back.get("owner") != record["owner"]:
        holder = describe(back) if back else "its lease file vanished"
        raise RunLeased(f"run {run_root}: another driver took its lease at the same moment ({holder}); "
                        f"one run has one writer: this one stops")
    return RunLease(url, record, heartbeat_seconds, say)

