"""The dependency lock: exact pins of every dependency but torch, within pyproject's bounds, and recorded in reports."""

import hashlib
import importlib.metadata
import importlib.util
import re

import pytest
from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gpt2repro import provenance
from gpt2repro import report as reporting

tomllib = pytest.importorskip("tomllib")
spec = importlib.util.spec_from_file_location("upgrade_lock", REPO / "scripts" / "upgrade_lock.py")
upgrade_lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(upgrade_lock)

LOCK = REPO / "requirements.lock"


def locked() -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in upgrade_lock.read_pins(LOCK).items()}


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in project["dependencies"] + extras]


def test_the_lock_pins_exact_versions_and_leaves_torch_to_the_makefile():
    lines = [line for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]
    assert lines and all(re.fullmatch(r"[a-z0-9-]+==[0-9][0-9a-z.]*", line) for line in lines), lines
    assert not {"torch", "triton"} & set(locked()) and not any(n.startswith("nvidia-") for n in locked())
    assert re.search(r"^TORCH \?= torch==\d", (REPO / "Makefile").read_text(), re.M)


def test_every_declared_dependency_is_locked_within_pyprojects_bounds():
    pins = locked()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        if name == "torch":
            continue
        assert name in pins, f"{name} is declared in pyproject.toml but not locked: run make upgrade"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} {requirement}"


def test_every_transitive_dependency_of_the_installed_environment_is_locked():
    """Walk the installed dependency tree from pyproject's requirements: every package in it is in the lock (torch's
    own tree aside), so `pip install -r requirements.lock` leaves nothing to float."""
    pins, seen, todo = locked(), set(), [r for r in declared() if canonicalize_name(r.name) != "torch"]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or upgrade_lock.NOT_LOCKED.match(name):
            continue
        seen.add(name)
        assert name in pins, f"{name} (needed via {requirement}) is not in requirements.lock"
        for extra in requirement.extras or {""}:
            for dependency in importlib.metadata.requires(name) or []:
                dep = Requirement(dependency)
                if dep.marker is None or dep.marker.evaluate({"extra": extra}):
                    todo.append(dep)


def test_pip_freeze_becomes_the_lock_without_the_project_torch_or_its_cuda_libraries():
    freeze = "\n".join([
        "# Editable Git install with no remote (gpt2repro==0.1.0)", "-e /work/gpt2repro", "PyYAML==6.0.4",
        "torch==2.13.0+cpu", "nvidia-cublas-cu12==12.8.4.1", "triton==3.5.0", "typing_extensions==4.16.0",
        "accelerate==1.15.0", "pip==26.3", "setuptools==84.2.1",
    ])
    assert upgrade_lock.lock_lines(freeze) == [
        "accelerate==1.15.0", "pyyaml==6.0.4", "setuptools==84.2.1", "typing-extensions==4.16.0"]
    assert upgrade_lock.changes({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "1"}) == [
        "  b: 2 -> 3", "  c: (none) -> 1"]


def test_reports_record_the_locks_hash_and_what_is_installed_otherwise(tmp_path, monkeypatch):
    lock = tmp_path / "requirements.lock"
    installed = importlib.metadata.version("pyyaml")
    lock.write_text(f"# header\npyyaml=={installed}\nnumpy==0.0.1\n")
    state = provenance.lock_state(lock)
    assert state["sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()
    assert state["not_as_locked"] == [f"numpy {importlib.metadata.version('numpy')} (locked 0.0.1)"]
    monkeypatch.setattr(provenance, "LOCK_FILE", lock)  # provenance() reads the lock LOCK_FILE names when called
    assert hashlib.sha256(lock.read_bytes()).hexdigest() != hashlib.sha256(LOCK.read_bytes()).hexdigest()
    assert provenance.provenance()["lock"]["sha256"] == state["sha256"]
    md = reporting.render_markdown({"lock": state})
    assert f"requirements.lock sha256 `{state['sha256'][:16]}`; installed otherwise: numpy" in md
