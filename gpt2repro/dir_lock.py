"""One writer at a time in a directory that a command fills: a training run's directory (train.py), a data directory
(prepare_data.py --out). A second process is refused in one line that names the first (host, pid, command, since
when) and what to do.

The lock is the OS's: fcntl.flock on LOCK_NAME in the directory, held for the command's life. It goes with its
process, so a run that crashed or was killed leaves nothing that blocks the next one, and a torch elastic restart
takes it again once the agent has stopped the old process. The file is never replaced while held (a rename would
make a new file that a second process could lock), so the holder's details are written into it in place, once:
a lock file that holds details is never locked for a second holder. One whose holder is gone (unheld after a
crash, or held only by forked children of a killed command, which keep its lock) is set aside (unlinked) for a
new one. Setting aside is a check that the path still names the file found, then its unlink: two processes that
found the same file must not both do it (the second would unlink the first's new lock), so both steps happen under
GUARD_NAME's lock, a file never unlinked, made the first time a lock is set aside. Light: no torch
(prepare_data.py imports it).
"""

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from gpt2repro.errors import UserError

LOCK_NAME = ".gpt2repro.lock"
GUARD_NAME = ".gpt2repro.lock.guard"
POLL_SECONDS = 0.2


class DirectoryInUseError(UserError, RuntimeError):
    """Another process writes into the directory: the message names it and what to do."""


def _holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:  # being written this very moment
        return {}


def _gone_from_this_host(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _still_there(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (not set aside or unlinked by another process meanwhile)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _set_aside(fd: int, path: Path) -> None:
    """Unlink `path` if it still names the file open as `fd`, under the guard's lock (see the module's docstring)."""
    try:
        guard = os.open(path.with_name(GUARD_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:  # the directory is gone: so is the file
        return
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if _still_there(fd, path):
            os.unlink(path)
    finally:
        os.close(guard)


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    return (f"{holder.get('command', 'another process')} (pid {holder.get('pid')} on {holder.get('host')}, since "
            f"{holder.get('since', '?')})")


def acquire(directory: Path, flag: str, instead: str, wait: float = 0.0) -> int | None:
    """Lock `directory` (created if missing) for this process; the open file descriptor that holds it, or None where
    it cannot be made or the filesystem has no locks (said in a warning). Raises DirectoryInUseError naming the
    holder if another process holds it after `wait` seconds; `instead` is the other way out the message offers
    (e.g. "use another --run-dir")."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:  # a file in the way, no permission: nothing can be written there, as the command's checks say
        return None
    path = directory / LOCK_NAME
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the directory, made for a lock, went with that lock's release meanwhile
            directory.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            stale = _gone_from_this_host(holder)
            if stale:
                _set_aside(fd, path)  # the next turn of the loop makes and locks a new file
            os.close(fd)
            if not stale and time.monotonic() >= deadline:
                raise DirectoryInUseError(
                    f"{flag} {directory} is in use by {_describe(holder)}; wait for it to end or stop it (a lock "
                    f"left by a crashed or killed run does not block), or {instead}"
                ) from None
            time.sleep(0 if stale else POLL_SECONDS)
            continue
        except OSError as e:  # e.g. a network filesystem mounted without lock support
            os.close(fd)
            print(f"warning: cannot lock {directory} ({e.strerror}): a second process writing into it would not be "
                  "refused", file=sys.stderr, flush=True)
            return None
        if os.fstat(fd).st_size:  # a crashed holder's file, which another process may be setting aside too
            _set_aside(fd, path)
            os.close(fd)
            continue
        # A file without details was never held: nobody sets it aside, so only its holder's release (an unlink
        # before unlocking) can have taken it from the path between our open and our lock.
        if not _still_there(fd, path):
            os.close(fd)
            continue
        holder = {"command": Path(sys.argv[0]).name or "python", "pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        return fd


def release(fd: int | None, directory: Path) -> None:
    """Remove the lock file while still holding it (an acquirer that opened it finds it gone and makes a new one),
    then unlock."""
    if fd is None:
        return
    path = directory / LOCK_NAME
    if _still_there(fd, path):
        os.unlink(path)
    os.close(fd)


@contextlib.contextmanager
def exclusive(directory: str | Path, flag: str, instead: str, wait: float = 0.0) -> Iterator[None]:
    """Hold `directory` for the `with` block (see `acquire`). A directory made only for the lock goes with it, so a
    command that fails before writing leaves nothing behind."""
    directory = Path(directory)
    made = not directory.exists()
    fd = acquire(directory, flag, instead, wait)
    try:
        yield
    finally:
        release(fd, directory)
        if made:
            with contextlib.suppress(OSError):  # not empty: the command wrote into it
                directory.rmdir()
