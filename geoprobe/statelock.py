"""One process at a time per state dir, so one migration is one event.

Two watches on one state dir would each confirm the same move; twenty ``check --state`` runs
started together would each compare with the same stored fix and each report the move. The state
dir's lock file ``geoprobe.lock`` is held with ``flock`` for as long as the process uses the
store: a watch holds it for its whole run and refuses to start when it is taken; ``check`` waits
for it (bounded) so concurrent checks take turns. The kernel drops the lock when its holder dies,
``kill -9`` included, so a crash never leaves the dir locked.

The holder writes its pid and command into the lock file, so the refusal can say who holds it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from geoprobe.errors import GeoprobeError
from geoprobe.paths import PRIVATE_FILE_MODE, private_dir

LOCK_NAME = "geoprobe.lock"
POLL_S = 0.05


class StateLocked(GeoprobeError):
    """Another geoprobe process holds the state dir."""


class StateLockError(GeoprobeError):
    """The lock file cannot be made or opened."""


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return f" (held by {text})" if text else ""


class StateLock:
    """``flock(LOCK_EX)`` on ``<state dir>/geoprobe.lock``; use as a context manager."""

    def __init__(self, directory: str | Path, *, what: str = "geoprobe") -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.what = what
        self.fd: int | None = None

    def _open(self) -> int:
        try:
            private_dir(self.directory)
            # O_NOFOLLOW: a link planted in a shared state dir must not make root create or
            # truncate a file elsewhere.
            return os.open(
                self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE_MODE
            )
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and self.path.is_file():
                try:  # a read-only state dir: lock what is there (flock needs no write access)
                    return os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError:
                    pass
            raise StateLockError(
                f"state dir {self.directory}: cannot open the lock file {LOCK_NAME}: "
                f"{exc.strerror or exc}"
            ) from None

    def acquire(self, timeout: float = 0.0) -> None:
        """Take the lock, waiting up to ``timeout`` seconds (0: do not wait).

        Raises ``StateLocked`` naming the dir and the holder when it stays taken.
        """
        fd = self._open()
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _holder(fd)
                    os.close(fd)
                    waited = f" after waiting {timeout:g} s" if timeout > 0 else ""
                    raise StateLocked(
                        f"state dir {self.directory} is in use by another geoprobe process"
                        f"{holder}{waited}"
                    ) from None
                time.sleep(POLL_S)
            except OSError as exc:
                os.close(fd)
                raise StateLockError(
                    f"state dir {self.directory}: cannot lock {LOCK_NAME}: {exc.strerror or exc}"
                ) from None
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}, {self.what}\n".encode(), 0)
        except OSError:
            pass  # a read-only lock file still locks; only the holder's name is lost

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None

    def __enter__(self) -> Self:
        if self.fd is None:
            self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def hold(directory: str | Path, *, timeout: float = 0.0, what: str = "geoprobe") -> StateLock:
    """The state dir's lock, taken (see ``StateLock.acquire``)."""
    lock = StateLock(directory, what=what)
    lock.acquire(timeout)
    return lock
