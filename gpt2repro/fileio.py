"""Small file I/O that every writer in the project shares: a reader never sees half a file, nor a file it cannot
open where its neighbours open."""

import os
import shutil
from pathlib import Path


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes to `path` through a temp file and a rename: readers see the old
    file or the new one, never half of one, and a failed write leaves no temp file behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def copy_atomically(source: Path, target: Path) -> None:
    """Copy `source` to `target` through a temp file and a rename."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def share_like(paths, like: Path) -> None:
    """Give each of `paths` the permission bits of `like`. safetensors 0.8 writes through a temporary file created
    0600 whatever the umask (safetensors issue 782), so saved weights are unreadable to the other users that can read
    the config beside them: a serving container running as another user, a shared folder."""
    mode = Path(like).stat().st_mode & 0o777
    for path in paths:
        os.chmod(path, mode)


def write_files(folder: Path, files: dict[str, str | bytes | Path]) -> None:
    """Each of `files` (name: text, bytes, or a file to copy) into `folder`, atomically."""
    for name, content in files.items():
        if isinstance(content, Path):
            copy_atomically(content, Path(folder) / name)
        else:
            write_atomically(Path(folder) / name, content)
