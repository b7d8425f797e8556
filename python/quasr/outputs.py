"""Output folders that are never half-written, never merged into, and never written by two runs.

`OutputFolder(out)` checks the target before any work (a file, an unwritable parent, a non-empty
folder that quasr did not write, the model cache), then, inside `with`, holds a lock beside it and
hands out a staging folder next to it. Only when the block succeeds is the staging folder renamed
into place (the old quasr output, if any, moved aside first and removed after): an interrupted run
leaves the old folder or none, never a folder that loads as a model with pieces missing.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

# Files whose presence marks a folder as quasr's own output (safe to replace as a whole).
QUASR_MARKERS = ("quasr_plan.json", "quasr_onnx.json")


class OutputError(ValueError):
    pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_permissions(folder: Path) -> None:
    """The modes a plain `mkdir` and `open(..., "w")` give (mkdtemp and some writers use 0700/0600)."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for p in folder.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def is_quasr_output(folder: Path) -> bool:
    return any((folder / m).exists() for m in QUASR_MARKERS)


def check_output_target(out: str | Path, overwrite: bool = False) -> Path:
    """The target as a Path, or an OutputError saying what is wrong with it and what to do."""
    if str(out).strip() == "":
        raise OutputError("--out is empty: give the folder to write, e.g. --out tiny-w4")
    out = Path(out).expanduser()
    from .models import cache_root

    cache = cache_root().resolve()
    target = out.resolve()
    if target == cache or cache in target.parents:
        raise OutputError(f"{out} is inside quasr's model cache ({cache}); write the output somewhere else")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not is_quasr_output(out) and not overwrite:
        raise OutputError(f"{out} is a non-empty folder that quasr did not write; choose an empty or new folder, "
                          f"or pass --overwrite to replace it")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {parent} (permission denied); choose another --out")
    return out


class OutputFolder:
    """`with OutputFolder(out) as stage:` write everything into `stage`; on success it becomes `out`."""

    def __init__(self, out: str | Path, overwrite: bool = False):
        self.out = check_output_target(out, overwrite)
        self.overwrite = overwrite
        self._lock_fd: int | None = None
        self.stage: Path | None = None

    def __enter__(self) -> Path:
        parent = self.out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            lock_path = parent / f".{self.out.name}.quasr-lock"
            self._lock_fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot write beside {self.out}: {exc.strerror or exc}; choose another --out") from None
        self._lock_path = lock_path
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # the holder before us may have removed the file between our open and our lock
            if os.fstat(self._lock_fd).st_ino != os.stat(lock_path).st_ino:
                raise BlockingIOError
        except (BlockingIOError, FileNotFoundError):
            os.close(self._lock_fd)
            self._lock_fd = None
            raise OutputError(f"another quasr process is writing {self.out}; wait for it or choose another --out") from None
        try:
            check_output_target(self.out, self.overwrite)  # again, now that no one else can write it
            for stale in parent.glob(f".{self.out.name}.partial-*"):  # left by a run that was killed
                shutil.rmtree(stale, ignore_errors=True)
            self.stage = Path(tempfile.mkdtemp(dir=parent, prefix=f".{self.out.name}.partial-"))
        except BaseException:
            self._unlock()
            raise
        return self.stage

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._publish()
        finally:
            if self.stage is not None and self.stage.exists():
                shutil.rmtree(self.stage, ignore_errors=True)
            self._unlock()

    def _publish(self) -> None:
        publish_permissions(self.stage)
        old = None
        if self.out.exists():
            old = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.old-"))
            os.rmdir(old)
            self.out.rename(old)
        self.stage.rename(self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            self._lock_path.unlink(missing_ok=True)  # while still held: a waiting process sees the inode change
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
