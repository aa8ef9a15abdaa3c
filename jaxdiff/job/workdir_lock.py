"""One training job per workdir: an exclusive `flock` on WORKDIR/train.lock.

The lock belongs to the open file, so the kernel releases it when the process ends in any
way (also `kill -9`): a crash never leaves a stale lock. In a multi-process job only
process 0 takes it (the workdir is shared by all processes of the job) and tells the others
whether it got it, so that every process of a second job stops with the same error. flock
works on local file systems and on NFS (Linux emulates it with POSIX locks there); on an
object store (gs://) there is nothing to lock and the lock is skipped.
"""

import fcntl
import os
import socket

import jax
import numpy as np
from jax.experimental import multihost_utils

LOCK_FILE = "train.lock"


class WorkdirBusy(RuntimeError):
  """Another job holds the workdir's lock."""


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds WORKDIR/train.lock or raises WorkdirBusy."""

  def __init__(self, workdir: str | os.PathLike):
    self.path = os.path.join(os.fspath(workdir), LOCK_FILE)
    self._fd: int | None = None

  def _try_lock(self) -> str | None:
    """Takes the lock; returns None, or who holds it (as they wrote it into the file)."""
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
      os.close(fd)
      return holder or "another process"
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    self._fd = fd
    return None

  def __enter__(self) -> "WorkdirLock":
    holder = None
    if jax.process_index() == 0 and "://" not in os.fspath(self.path):
      holder = self._try_lock()
    if jax.process_count() > 1:
      busy = multihost_utils.broadcast_one_to_all(np.int32(holder is not None))
      holder = holder or ("the lock holder of process 0" if int(busy) else None)
    if holder is not None:
      raise WorkdirBusy(
          f"Workdir {os.path.dirname(self.path)} is in use by another training job "
          f"({holder}, holding {LOCK_FILE}); wait for it to end or use another --workdir.")
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      os.close(self._fd)  # Closing the file releases the lock.
      self._fd = None
