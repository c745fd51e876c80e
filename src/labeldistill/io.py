"""Atomic writers and output-path checks used by every layer (base layer: stdlib only).

Writers go to a temporary name in the same directory and ``os.replace`` it, so an interrupted
run never leaves a partial file; :func:`remove_stale_temporaries` deletes what a killed writer
left. The output checks fail early with one :class:`~labeldistill.errors.UserError` line.
:func:`die_with_parent` (a pool initializer) lives here because it shares the pid test of the
temporaries. The validated readers of the data path are in :mod:`labeldistill.data.readers`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import pickle
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from labeldistill.errors import UserError


def die_with_parent(pid: int) -> None:
    """Pool initializer (``initializer=die_with_parent, initargs=(os.getpid(),)``): the worker
    exits once process ``pid``, the command that made the pool, is gone, so a ``kill -9`` of the
    command leaves no orphaned workers. A forkserver worker's parent is the forkserver, which
    itself lives as long as its workers, so the worker watches ``pid`` from a daemon thread
    (and, where ``pid`` is its direct parent on Linux, also asks for ``PR_SET_PDEATHSIG``)."""
    if sys.platform.startswith("linux") and os.getppid() == pid:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG

    def watch() -> None:
        while _pid_alive(pid):
            time.sleep(0.5)
        os._exit(1)

    if not _pid_alive(pid):
        os._exit(1)
    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def remove_stale_temporaries(directory: str | Path) -> int:
    """Delete the temporary files that :func:`atomic_path` left in ``directory`` (not
    recursive) when its writer was killed: their name carries the writer's pid, and only those
    of processes that no longer run are removed (a concurrent writer keeps its own). -> count."""
    removed = 0
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    for tmp in directory.glob(".*.tmp"):
        pid_text = tmp.name.rsplit(".", 3)[-3] if tmp.name.count(".") >= 4 else ""
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat_file = Path("/proc") / str(pid) / "stat"
    try:
        state = stat_file.read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _umask() -> int:
    """The process umask: from /proc on Linux, else read by setting it and putting it back
    (which briefly changes it for other threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # ``.<name>.<pid>.<random>.tmp``: remove_stale_temporaries() tells a dead writer's leftovers
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates mode 0600; give the file the mode a plain open() would (the umask)
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _check_writable_base(path: Path, start: Path, flag: str) -> None:
    """The nearest existing directory at or above ``start`` is writable (for ``path``).
    Probed with a temporary file: permission bits do not tell for root, ACLs or read-only
    mounts."""
    base = start
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise UserError(f"{flag} {path}: {base} is a file, not a directory: choose another path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".labeldistill-write-test.", dir=base)
    except OSError as exc:
        raise UserError(
            f"{flag} {path}: {base} is not writable ({exc.strerror}): choose a writable path"
        ) from None
    os.close(fd)
    os.unlink(tmp)


def check_output_file(path: str | Path, flag: str = "--out") -> Path:
    """Fail early with one line unless ``path`` can be written as a file (not a directory;
    its directory exists or can be created, and is writable). Creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory: give a file name (e.g. {path}/out)")
    _check_writable_base(path, path.parent, flag)
    return path


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Fail early with one line unless ``path`` is (or can be created as) a writable directory.
    Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file: give a directory")
    _check_writable_base(path, path, flag)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj: Any, **dumps_kwargs: Any) -> None:
    """Write ``json.dumps(obj, **dumps_kwargs)`` to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, **dumps_kwargs))


def atomic_pickle(path: str | Path, obj: Any) -> None:
    """Pickle ``obj`` (highest protocol) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
