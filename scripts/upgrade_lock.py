"""Refresh requirements.lock to the newest releases, and test them before anyone else meets them.

    make upgrade                       # = python scripts/upgrade_lock.py
    python scripts/upgrade_lock.py --tests "-m 'not slow'"   # the quick subset (the default)
    python scripts/upgrade_lock.py --tests ""                # the whole suite

1. a fresh virtual environment (never .venv) gets torch as the Makefile pins it and the project with every
   extra, each dependency at its newest release that pyproject.toml allows;
2. `pip freeze --all` of it, less pip, the project itself and torch's own build (below), is the candidate lock;
3. the tests run in that environment;
4. passed: requirements.lock is replaced, its header saying when, with which Python and what passed;
   failed: requirements.lock stays as it is, the candidate is left in requirements.lock.failed, and the
   versions that changed are listed: pin the culprit in pyproject.toml or fix the code, then run again.

torch is not in the lock: the Makefile pins it (TORCH=torch==2.13.0), and which build a machine needs (CPU, or
CUDA with its nvidia-* libraries and triton, which torch itself pins exactly) depends on the machine. Everything
else, transitive dependencies included, is pinned here.
"""

import argparse
import datetime
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the project's atomic writer; it needs nothing beyond the standard library
from gpt2repro.fileio import write_atomically  # noqa: E402

LOCK = REPO / "requirements.lock"
# torch's own build and what only its CUDA build pulls in: the Makefile's TORCH pin decides them per machine.
NOT_LOCKED = re.compile(r"^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)$")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_lines(freeze_output: str, project: str = "gpt2repro") -> list[str]:
    """The `name==version` lines of `pip freeze` output that belong in the lock, sorted by name."""
    pins = {}
    for line in freeze_output.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-e ")) or "==" not in line:
            continue  # comments, editable installs (the project), direct references
        name, version = line.split("==", 1)
        if normalize(name) in (project, "pip") or NOT_LOCKED.match(normalize(name)):
            continue
        pins[normalize(name)] = f"{normalize(name)}=={version.split('+')[0]}"
    return [pins[name] for name in sorted(pins)]


def read_pins(path: Path) -> dict[str, str]:
    """{name: version} of a lock file."""
    if not path.is_file():
        return {}
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "==" in line:
            name, version = line.split("==", 1)
            pins[normalize(name)] = version.strip()
    return pins


def changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    lines = []
    for name in sorted(old.keys() | new.keys()):
        if old.get(name) != new.get(name):
            lines.append(f"  {name}: {old.get(name, '(none)')} -> {new.get(name, '(removed)')}")
    return lines


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+ " + shlex.join(cmd), flush=True)
    return subprocess.run(cmd, cwd=REPO, **kwargs)


def run_streaming(cmd: list[str]) -> tuple[int, str]:
    """Run `cmd` with its output shown as it comes (the tests take minutes) and returned."""
    print("+ " + shlex.join(cmd), flush=True)
    lines = []
    with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line)
    return process.returncode, "".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch", default="torch==2.13.0", help="the torch requirement (the Makefile's TORCH)")
    parser.add_argument("--python", default=sys.executable, help="the Python the environment is made from")
    parser.add_argument("--tests", default="-m 'not slow'", help="pytest arguments (default: %(default)s)")
    parser.add_argument("--venv", help="where to make the environment (default: a temporary directory)")
    args = parser.parse_args(argv)

    venv = Path(args.venv or tempfile.mkdtemp(prefix="gpt2repro-upgrade-"))
    shutil.rmtree(venv, ignore_errors=True)
    py = str(venv / "bin" / "python")
    run([args.python, "-m", "venv", str(venv)], check=True)
    run([py, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    quiet = {**os.environ, "PYTHONWARNINGS": "ignore:Editable installation"}  # as the Makefile's setup
    run([py, "-m", "pip", "install", "--quiet", "--upgrade", args.torch, "-e", ".[dev]"], check=True, env=quiet)
    # --all: setuptools too (tensorboard needs it at run time); pip itself is upgraded by the Makefile
    freeze = run([py, "-m", "pip", "freeze", "--all"], check=True, capture_output=True, text=True).stdout
    candidate = lock_lines(freeze)
    old = read_pins(LOCK)
    new = dict(line.split("==", 1) for line in candidate)
    diff = changes(old, new)

    returncode, output = run_streaming([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *shlex.split(args.tests)])
    summary = (re.findall(r"^=*\s*(\d+ (?:passed|failed).*?)\s*=*$", output, re.M) or ["no summary"])[-1]
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    outcome = f"{today}: python {platform.python_version()}, {args.torch}: pytest -q {args.tests}: {summary}"
    header = [
        "# Exact versions of every dependency of gpt2repro but torch, transitive ones included: what `make setup`",
        "# (so `make test`, `make demo` and CI) installs. torch is pinned by the Makefile (TORCH), its CPU or CUDA",
        "# build as the machine needs. Refresh with `make upgrade` (scripts/upgrade_lock.py), which tests it first.",
        f"# last refreshed {outcome}",
    ]
    text = "\n".join(header + candidate) + "\n"
    print("versions changed:\n" + ("\n".join(diff) or "  none"))
    if returncode != 0:
        write_atomically(REPO / "requirements.lock.failed", text)
        print(f"upgrade FAILED ({summary}): requirements.lock is unchanged; the candidate is requirements.lock.failed")
        return 1
    write_atomically(LOCK, text)
    print(f"upgrade passed: wrote {LOCK.name} ({len(candidate)} packages); commit it with the line above:\n{outcome}")
    if not args.venv:
        shutil.rmtree(venv, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
