"""Where a result came from: the commit of the code, the library versions, the dependency lock, when.

Light on purpose (the standard library only): prepare_data.py records the commit in every manifest it writes and
never imports torch, which the report module does through the checkpoints.
"""

import hashlib
import importlib.metadata
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

CODE_DIR = Path(__file__).resolve().parent
LOCK_FILE = CODE_DIR.parent / "requirements.lock"  # the checkout's lock (make setup installs it)
LIBRARIES = ("torch", "transformers", "accelerate", "datasets", "huggingface_hub", "tokenizers")


def git_state(directory: Path = CODE_DIR) -> dict:
    """The commit the code in `directory` is at and whether it has uncommitted changes; "unknown" outside
    git (an installed package, a tarball, no git binary): a report is never lost for want of it."""

    def git(*args) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if commit else None
    return {"commit": commit or "unknown", "dirty": None if status is None else bool(status)}


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def lock_state(lock: Path | None = None) -> dict | None:
    """The dependency lock the code ships (requirements.lock, LOCK_FILE where `lock` is None, read when called): its
    sha256, and which locked packages are installed at another version (a hand-made environment); None without the
    file (an installed package)."""
    lock = Path(lock) if lock is not None else LOCK_FILE
    try:
        text = lock.read_bytes()
    except OSError:
        return None
    differs = []
    for line in text.decode().splitlines():
        if line.startswith("#") or "==" not in line:
            continue
        name, version = line.split("==", 1)
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version.strip():
            differs.append(f"{name} {installed or 'missing'} (locked {version.strip()})")
    return {"file": lock.name, "sha256": hashlib.sha256(text).hexdigest(), "not_as_locked": differs}


def provenance() -> dict:
    """When, from which code and with which libraries: for any result file."""
    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "code": git_state(),
            "versions": library_versions(), "lock": lock_state()}
