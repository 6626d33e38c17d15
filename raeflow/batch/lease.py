"""Which job writes an output folder now: `_manifest/lease.json`, renewed by the driver while it runs.

Two jobs on one `--out` would undo each other's work: a starting job deletes the partial files of
the shards it is about to redo, which are the files the running job is writing. So a folder holds
one job at a time, and a second one is refused with one line naming the first:

    acquire   create the lease where none is: exclusive (a hard link on a local disk, a PUT with
              `If-None-Match: *` on S3), so of two jobs starting at the same instant one wins and
              the other finds its lease. Where a store is not exclusive (checked on S3 by creating
              twice; other stores are taken as not), the job reads it back `CONFIRM_SECONDS`
              later and gives way if another job's lease is there.
    renew     a driver thread rewrites it every `stale_seconds() / 4` (30 s); each commit checks
              that this job still holds it, and stops the job when another job took it over or
              it could not be renewed for three of the four periods.
    refuse    a lease renewed less than `stale_seconds()` ago (120 s): `JobError` naming its job,
              host, pid, start time and the folder.
    take over a lease not renewed for `stale_seconds()`, or whose process is gone (the same
              machine: same boot and pid namespace, no such process): delete it, create ours,
              confirm after `CONFIRM_SECONDS`, and print a line saying whose lease was taken.
    release   delete it when the job ends (done, failed, Ctrl-C, SIGTERM); a kill -9 leaves it to
              be taken over as above.

Age is this machine's clock against the later of the holder's heartbeat (its clock) and the
lease's modification time (the store's clock), so a job is never taken over early unless this
machine's clock runs more than `stale_seconds() - heartbeat` ahead of both (docs/batch.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path

from raeflow import __version__
from raeflow.batch.output import OutputDir, no_space
from raeflow.errors import JobError
from raeflow.progress import format_duration

LEASE_FILE = "_manifest/lease.json"
"""The lease of the job writing the folder now (absent when no job runs)."""
STALE_SECONDS = 120.0
"""A lease not renewed for this long belongs to a job that was killed or lost: the next job takes it over."""
STALE_ENV = "RAEFLOW_LEASE_STALE_S"
"""Environment variable that sets another stale time (seconds); renewals come four times as often."""
CONFIRM_SECONDS = 2.0
"""How long a job waits before reading back a lease it could not create exclusively (a take-over, a
store that ignores `If-None-Match`): longer than two racing jobs' writes lie apart."""
ATTEMPTS = 5
"""Create-or-judge rounds before giving up (each round ends when a lease vanished or changed under us)."""
RETRY_SECONDS = 5.0
"""Seconds before a renewal that failed (a store error) is tried again."""

UNREADABLE = "unreadable"
"""The job id given to a lease that cannot be parsed (judged by the file's age alone)."""

_HELD: set[str] = set()
"""Jobs of this process holding a lease now (a lease of this pid but of no such job is left over)."""


def stale_seconds() -> float:
    """The stale time: `$RAEFLOW_LEASE_STALE_S`, else `STALE_SECONDS`."""
    try:
        value = float(os.environ.get(STALE_ENV, "") or STALE_SECONDS)
    except ValueError:
        return STALE_SECONDS
    return value if value > 0 else STALE_SECONDS


@dataclass(frozen=True)
class Holder:
    """The job named in a lease: what a refused job is told, and what says whether it still runs."""

    job: str
    """A random id of the job (one run of one command)."""
    kind: str
    """embed, denoise or report."""
    out: str
    """The folder, as the job's user typed it."""
    host: str
    """The driver's host name."""
    pid: int
    """The driver's process id."""
    started: float
    """When the job took the lease (seconds since the epoch, its clock)."""
    heartbeat: float
    """When it last renewed the lease (its clock)."""
    beats: int = 0
    """Renewals so far."""
    machine: str = ""
    """Boot id and pid namespace of the driver (Linux), so a lease left on this machine is known dead."""
    process_started: str = ""
    """The driver's start time in clock ticks since boot (a reused pid is another process)."""
    version: str = ""
    """raeflow version of the job."""

    @classmethod
    def this_process(cls, kind: str, out: str) -> Holder:
        """A new job run by this process."""
        now = time.time()
        pid = os.getpid()
        return cls(
            job=uuid.uuid4().hex[:12],
            kind=kind,
            out=out,
            host=socket.gethostname(),
            pid=pid,
            started=now,
            heartbeat=now,
            machine=_machine(),
            process_started=_process_started(pid),
            version=__version__,
        )

    @classmethod
    def parse(cls, raw: bytes) -> Holder:
        """The holder written in a lease; one that cannot be read is judged by the file's age alone."""
        try:
            body = json.loads(raw)
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{name: value for name, value in body.items() if name in known})
        except (ValueError, TypeError):
            return cls(
                job="unreadable",
                kind="raeflow",
                out="",
                host="an unknown host",
                pid=0,
                started=0,
                heartbeat=0,
            )

    def encode(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True).encode()

    def renewed(self) -> Holder:
        return dataclasses.replace(self, heartbeat=time.time(), beats=self.beats + 1)

    def describe(self) -> str:
        """`embed job 3f2a9c0b1d2e on node-1 (pid 4242), started 2026-12-03 10:14:52 UTC`."""
        if self.job == UNREADABLE:
            return f"a job whose {LEASE_FILE} cannot be read"
        return f"{self.kind} job {self.job} on {self.host} (pid {self.pid}), started {_utc(self.started)}"

    def gone(self) -> bool:
        """Whether the job's driver is known to have ended: it ran on this machine and its process is gone."""
        if not self.machine or self.machine != _machine() or self.host != socket.gethostname():
            return False  # another machine (or one that cannot tell): only the heartbeat's age says
        if self.pid == os.getpid():
            return self.job not in _HELD
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # another user's process runs under that pid
        return bool(self.process_started) and _process_started(self.pid) != self.process_started


class Lease:
    """The lease of one job on one output folder: `check`, `acquire`, `ensure_held` at commits, `release`."""

    def __init__(self, out: OutputDir, kind: str, *, stale: float | None = None) -> None:
        self.out = out
        self.kind = kind
        self.stale = stale if stale is not None else stale_seconds()
        self.heartbeat = self.stale / 4
        self.holder: Holder | None = None
        """This job, once it holds the lease (its last renewal)."""
        self._lost_to: Holder | None = None
        self._renewed_at = 0.0
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """Raise `JobError` when another job holds the folder now; reads only (a job calls it before
        it connects to Ray, and `acquire` once connected)."""
        held = self.read()
        if held is not None:
            age = self.age(held)
            if self.why_free(held, age) is None:
                raise JobError(self._refusal(held, age))

    def acquire(self) -> str | None:
        """Take the lease, or raise `JobError` naming the job that holds it (or saying that the
        folder's disk is full). Returns the line to print when a dead job's lease was taken over
        (None otherwise); starts renewing it."""
        mine = Holder.this_process(self.kind, self.out.url())
        _HELD.add(mine.job)  # from its first write: another job of this process must not think it gone
        try:
            line = self._take(mine)
        except BaseException as err:  # refused, a store error, or Ctrl-C (maybe just after our create)
            _HELD.discard(mine.job)
            with contextlib.suppress(Exception):
                if self.read() == mine:
                    self._delete()
            found = no_space(err) if isinstance(err, OSError) else None
            if found is not None:
                raise self.out.no_space_error(found) from None
            raise
        self.holder = mine
        self._renewed_at = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._keep, name="raeflow-lease", daemon=True)
        self._thread.start()
        return line

    def ensure_held(self) -> None:
        """Raise `JobError` when this job no longer holds the lease (another job took it over, or it
        could not be renewed long enough that another job may have): the job must stop committing."""
        if self.holder is None:
            return
        if self._lost_to is not None:
            raise JobError(
                f"--out {self.out.url()} was taken over by {self._lost_to.describe()} while this job ran "
                f"(its lease had not been renewed for {format_duration(self.stale)}); this job stops "
                "and leaves the folder to that one"
            )
        silent = time.monotonic() - self._renewed_at
        if silent > self.stale - self.heartbeat:
            found = no_space(self._error) if self._error is not None else None
            if found is not None:  # the disk filled up: what to do is free space, not wait
                raise self.out.no_space_error(found)
            raise JobError(
                f"could not renew the lease on --out {self.out.url()} for {format_duration(silent)} "
                f"({self._error}); this job stops, since another job may take the folder over now; "
                "run the same command again to resume"
            )

    def release(self) -> None:
        """Stop renewing and delete the lease if this job still holds it; never raises (a lease left
        behind is taken over later, with a line saying so)."""
        if self.holder is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=RETRY_SECONDS)
        with contextlib.suppress(Exception):  # the job's own outcome matters more than the lease's
            held = self.read()
            if held is not None and held.job == self.holder.job:
                self._delete()
        _HELD.discard(self.holder.job)
        self.holder = None

    def renew(self) -> None:
        """Write a new heartbeat, unless another job holds the lease now (then `ensure_held` raises)."""
        assert self.holder is not None
        held = self.read()
        fresh = self.holder.renewed()
        if held is not None and held.job != self.holder.job:
            self._lost_to = held
            return
        if self._stop.is_set():  # the job ended while we read: `release` deletes the lease, never us
            return
        if held is None:  # removed (a take-over that lost its race, a deleted folder): ours again if free
            if not self.out.create(LEASE_FILE, fresh.encode()):
                return  # another job created one this instant: the next renewal judges it
        else:
            self.out.put(LEASE_FILE, fresh.encode())
        self.holder = fresh
        self._renewed_at = time.monotonic()

    def read(self) -> Holder | None:
        """The holder written in the folder's lease, or None where there is none."""
        try:
            return Holder.parse(self.out.read(LEASE_FILE))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def age(self, held: Holder) -> float:
        """Seconds since `held` last renewed its lease, by the later of its heartbeat and the file's time."""
        return time.time() - max(held.heartbeat, self._modified() or 0.0)

    def why_free(self, held: Holder, age: float) -> str | None:
        """Why the lease of `held` may be taken over, or None while that job may still run."""
        if held.gone():
            return f"its process {held.pid} on this machine is gone"
        if age > self.stale:
            last, every = format_duration(age), format_duration(self.heartbeat)
            return f"its lease was last renewed {last} ago (a running job renews it every {every})"
        return None

    # --- inside ---------------------------------------------------------------------------------
    def _take(self, mine: Holder) -> str | None:
        """Create the lease as `mine`, or take over a dead job's; the take-over line, or `JobError`."""
        for _ in range(ATTEMPTS):
            if self.out.create(LEASE_FILE, mine.encode()):
                if self._exclusive(mine) or self._confirmed(mine):
                    return None
                continue  # another job's lease replaced ours: judged next round
            held = self.read()
            if held is None:  # released meanwhile, or a conditional write of another job in flight
                time.sleep(0.2)
                continue
            if held == mine:  # our create was applied but its answer lost: s3fs's retry got 412
                return None
            age = self.age(held)
            reason = self.why_free(held, age)
            if reason is None:
                raise JobError(self._refusal(held, age))
            if self.read() != held:  # renewed or taken over since we looked
                continue
            self._delete()
            if self.out.create(LEASE_FILE, mine.encode()) and self._confirmed(mine):
                return (
                    f"took over --out {self.out.url()} from {held.describe()}: {reason}, so it was killed "
                    "or lost; its unfinished shards are redone"
                )
        raise JobError(
            f"--out {self.out.url()}: other jobs kept taking its lease ({LEASE_FILE}) in {ATTEMPTS} tries; "
            "run one job per --out"
        )

    def _refusal(self, held: Holder, age: float) -> str:
        return (
            f"--out {self.out.url()} is being written by {held.describe()}, lease renewed "
            f"{format_duration(age)} ago; wait for it to end or write to another --out "
            f"(a lease not renewed for {format_duration(self.stale)} is taken over: {LEASE_FILE})"
        )

    def _exclusive(self, mine: Holder) -> bool:
        """Whether our create was exclusive: always on a local disk; on S3 if a second create is
        refused (a store that ignores `If-None-Match` writes it again, with the same bytes)."""
        if not self.out.creates_exclusively:
            return False
        return self.out.is_local or not self.out.create(LEASE_FILE, mine.encode())

    def _confirmed(self, mine: Holder) -> bool:
        """Whether the lease is still ours `CONFIRM_SECONDS` after we wrote it."""
        time.sleep(CONFIRM_SECONDS)
        held = self.read()
        return held is not None and held.job == mine.job

    def _keep(self) -> None:
        wait = self.heartbeat
        while not self._stop.wait(wait) and self._lost_to is None:
            try:
                self.renew()
                wait = self.heartbeat
            except (
                Exception
            ) as err:  # a store error: tried again soon; `ensure_held` stops the job if it lasts
                self._error = err
                wait = min(RETRY_SECONDS, self.heartbeat)

    def _delete(self) -> None:
        try:
            self.out.fs.rm(self.out.path(LEASE_FILE))
        except FileNotFoundError:
            pass
        self.out.fs.invalidate_cache(self.out.path(LEASE_FILE))

    def _modified(self) -> float | None:
        """The lease file's modification time by the store's clock (None where it cannot say)."""
        path = self.out.path(LEASE_FILE)
        try:
            self.out.fs.invalidate_cache(path)
            when = self.out.fs.modified(path)
        except (OSError, NotImplementedError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return float(when.timestamp())


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _machine() -> str:
    """This boot of this machine and this pid namespace (Linux), or '' where that cannot be told."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _process_started(pid: int) -> str:
    """Start time of process `pid` in clock ticks since boot (field 22 of /proc/PID/stat), or ''."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]
