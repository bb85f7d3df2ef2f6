"""A stand-in for the Hugging Face Hub's dataset and model repos: local folders (ROOT/owner/name/..., a branch in
ROOT/owner/name/.branches/BRANCH/...) reached through huggingface_hub's own calls, with only the network edge replaced.

Replaced: HfApi.dataset_info / repo_info / list_repo_tree / list_repo_files (the metadata calls),
file_download.get_hf_file_metadata (the per-file HEAD) and file_download.http_get (the transfer),
HfApi.create_repo / create_branch / upload_folder / create_commit (the uploads). Everything between them
(snapshot_download's planning, filtering and threads, hf_hub_download's temp files, renames, cache and local_dir
metadata, transformers' from_pretrained above it) is the libraries' real code. A revision's commit id is a hash of
its content, so an upload makes a new one.

In a subprocess, put tests/stand_in_hub_site on PYTHONPATH and set GPT2REPRO_STAND_IN_HUB=ROOT: its
sitecustomize installs the stand-in before the command runs.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path
from urllib.parse import unquote

import httpx2
import numpy as np
from huggingface_hub import CommitInfo, CommitOperationDelete, HfApi, constants, file_download
from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.file_download import HfFileMetadata
from huggingface_hub.hf_api import DatasetInfo, ModelInfo, RepoFile, RepoUrl
from huggingface_hub.utils import filter_repo_objects

import prepare_data
from gpt2repro.token_shards import load_manifest, read_shard, write_shard

VAL = 2048  # the validation budget of the data prepared for the stand-in Hub (conftest's `prepared`)
SETTINGS = ".stand_in.json"  # per repo: private flag (hidden files are not part of the repo)
BRANCHES = ".branches"  # per repo: the branches other than main, a folder each


def _missing(kind, repo_id: str, what: str | None = None, headers: dict | None = None):
    url = f"{constants.ENDPOINT}/api/datasets/{repo_id}"
    response = httpx2.Response(404, request=httpx2.Request("GET", url), headers=headers or {})
    return kind(f"{what or repo_id}: not found", response=response)


class StandInHub:
    def __init__(self, root):
        self.root = Path(root)
        self.served = {}  # file name -> bytes sent, over all downloads
        self.fail_after = {}  # file name -> bytes after which its transfer drops (ConnectError)

    # -- the repos ------------------------------------------------------------------------------

    def repo(self, repo_id: str) -> Path:
        return self.root / repo_id

    def branch(self, repo_id: str, branch: str | None = None) -> Path:
        """The folder of a branch (main: the repo's own)."""
        return self.repo(repo_id) if branch in (None, "main") else self.repo(repo_id) / BRANCHES / branch

    def branches(self, repo_id: str) -> list[str]:
        extra = self.repo(repo_id) / BRANCHES
        return ["main", *sorted(p.name for p in extra.iterdir())] if extra.is_dir() else ["main"]

    def files(self, repo_id: str, revision: str | None = None) -> dict[str, Path]:
        """{name: path} of the files at `revision` (a branch or a commit id; None: main)."""
        if not self.repo(repo_id).is_dir():
            raise _missing(RepositoryNotFoundError, repo_id)
        folder = self.branch(repo_id, self._branch_of(repo_id, revision))
        return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}

    def _branch_of(self, repo_id: str, revision: str | None) -> str:
        if revision in (None, "main") or revision in self.branches(repo_id):
            return revision or "main"
        for branch in self.branches(repo_id):
            if self.revision(repo_id, branch) == revision:
                return branch
        raise _missing(RevisionNotFoundError, repo_id, f"{repo_id}@{revision}")

    def revision(self, repo_id: str, revision: str | None = None) -> str:
        """The commit id of `revision` (a branch, or a commit id itself)."""
        digest = hashlib.sha1()
        for name, path in self.files(repo_id, revision).items():
            digest.update(f"{name}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\0".encode())
        return digest.hexdigest()

    def settings(self, repo_id: str) -> dict:
        path = self.repo(repo_id) / SETTINGS
        return json.loads(path.read_text()) if path.is_file() else {}

    def _resolve(self, repo_id: str, revision: str | None) -> str:
        return self.revision(repo_id, revision)

    # -- the network edge -----------------------------------------------------------------------

    def dataset_info(self, api, repo_id, *, revision=None, timeout=None, files_metadata=False, **_):
        sha = self._resolve(repo_id, revision)
        siblings = [{"rfilename": name, "size": path.stat().st_size if files_metadata else None}
                    for name, path in self.files(repo_id, revision).items()]
        return DatasetInfo(id=repo_id, sha=sha, siblings=siblings, private=self.settings(repo_id).get("private"))

    def repo_info(self, api, repo_id, *, repo_type=None, revision=None, files_metadata=False, **_):
        if repo_type == "dataset":
            return self.dataset_info(api, repo_id, revision=revision, files_metadata=files_metadata)
        siblings = [{"rfilename": name} for name in self.files(repo_id, revision)]
        return ModelInfo(id=repo_id, sha=self.revision(repo_id, revision), siblings=siblings,
                         private=self.settings(repo_id).get("private"))

    def list_repo_tree(self, api, repo_id, path_in_repo=None, *, recursive=False, revision=None, **_):
        for name, path in self.files(repo_id, revision).items():
            yield RepoFile(path=name, size=path.stat().st_size, oid=hashlib.sha1(path.read_bytes()).hexdigest())

    def list_repo_files(self, api, repo_id, *, revision=None, **_):
        return list(self.files(repo_id, revision))

    def _file(self, url: str) -> tuple[str, str, str, Path]:
        # {endpoint}/datasets/{owner}/{name}/resolve/{revision}/{file}, or {endpoint}/{owner}/{name}/resolve/... (models)
        tail = unquote(url[len(constants.ENDPOINT) + 1:] if url.startswith(constants.ENDPOINT) else url)
        tail = tail.removeprefix("datasets/")
        repo_id, rest = tail.split("/resolve/", 1)
        revision, name = rest.split("/", 1)
        files = self.files(repo_id, revision)
        if name not in files:
            commit = {constants.HUGGINGFACE_HEADER_X_REPO_COMMIT: self.revision(repo_id, revision)}
            raise _missing(RemoteEntryNotFoundError, repo_id, f"{repo_id}/{name}", commit)
        return repo_id, revision, name, files[name]

    def get_hf_file_metadata(self, url, *args, **kwargs):
        repo_id, revision, name, path = self._file(url)
        return HfFileMetadata(commit_hash=self.revision(repo_id, revision),
                              etag=hashlib.sha256(path.read_bytes()).hexdigest(),
                              location=url, size=path.stat().st_size, xet_file_data=None)

    def http_get(self, url, temp_file, *, resume_size=0, expected_size=None, tqdm_class=None, _tqdm_bar=None, **_):
        _, _, name, path = self._file(url)
        data = path.read_bytes()
        bar = tqdm_class(total=len(data), initial=resume_size) if tqdm_class is not None else None
        for start in range(resume_size, len(data), 4096):
            chunk = data[start : start + 4096]
            limit = self.fail_after.get(name)
            if limit is not None and start + len(chunk) > limit:
                raise httpx2.ConnectError(f"connection reset while downloading {name} (stand-in)")
            temp_file.write(chunk)
            self.served[name] = self.served.get(name, 0) + len(chunk)
            if bar is not None:
                bar.update(len(chunk))

    def create_repo(self, api, repo_id, *, private=None, repo_type=None, exist_ok=False, **_):
        folder = self.repo(repo_id)
        if folder.exists() and not exist_ok:
            raise FileExistsError(repo_id)
        if not folder.exists():
            folder.mkdir(parents=True)
            (folder / SETTINGS).write_text(json.dumps({"private": bool(private), "repo_type": repo_type}))
        return RepoUrl(f"{constants.ENDPOINT}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}")

    def upload_folder(self, api, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **_):
        self.files(repo_id)  # the repo must exist
        folder = Path(folder_path)
        names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        for name in filter_repo_objects(names, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
            target = self.repo(repo_id) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / name, target)

    def create_branch(self, api, repo_id, *, branch, revision=None, exist_ok=False, **_):
        source = self.files(repo_id, revision)
        folder = self.branch(repo_id, branch)
        if folder.exists():
            if not exist_ok:
                raise FileExistsError(f"{repo_id}@{branch}")
            return
        folder.mkdir(parents=True)
        for name, path in source.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, folder / name)

    def create_commit(self, api, repo_id, operations, *, commit_message="", revision=None, **_):
        self.files(repo_id, revision)
        folder = self.branch(repo_id, self._branch_of(repo_id, revision))
        for op in operations:
            target = folder / op.path_in_repo
            if isinstance(op, CommitOperationDelete):
                target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            content = op.path_or_fileobj
            target.write_bytes(content if isinstance(content, bytes) else Path(content).read_bytes())
        oid = self.revision(repo_id, revision)
        return CommitInfo(commit_url=f"{constants.ENDPOINT}/{repo_id}/commit/{oid}", commit_message=commit_message,
                          commit_description="", oid=oid)

    def install(self, setattr_=setattr) -> "StandInHub":
        """Route huggingface_hub's network edge here (`setattr_`: e.g. pytest's monkeypatch.setattr)."""
        for name in ("dataset_info", "repo_info", "list_repo_tree", "list_repo_files", "create_repo", "create_branch",
                     "upload_folder", "create_commit"):
            method = getattr(self, name)
            setattr_(HfApi, name, lambda api, *args, _m=method, **kwargs: _m(api, *args, **kwargs))
        setattr_(file_download, "get_hf_file_metadata", self.get_hf_file_metadata)
        setattr_(file_download, "http_get", self.http_get)
        return self


def install_from_environment() -> None:
    root = os.environ.get("GPT2REPRO_STAND_IN_HUB")
    if root:
        StandInHub(root).install()


# ---- the tests' repos and downloads ----


def llmc_repo(hub, prepared, repo_id="kjj0/plays10B-gpt2", extra_val=1000):
    """The prepared tokens as modded-nanogpt publishes them: no manifest, plays_val_000000.bin (the val split and
    `extra_val` tokens past the budget, as kjj0's 100M-token val shard is longer than the 10.5M scored), then
    plays_train_000001.bin ... (the prepared train shards, byte for byte)."""
    folder = hub.repo(repo_id)
    folder.mkdir(parents=True)
    manifest = load_manifest(prepared)
    val = np.concatenate([np.asarray(read_shard(prepared / s["file"])) for s in manifest["shards"]
                          if s["split"] == "val"])
    write_shard(folder / "plays_val_000000.bin", np.concatenate([val, val[:extra_val][::-1]]))
    train = [s["file"] for s in manifest["shards"] if s["split"] == "train"]
    for i, file in enumerate(train, 1):
        shutil.copyfile(prepared / file, folder / f"plays_train_{i:06d}.bin")
    (folder / "README.md").write_text("---\nlicense: odc-by\n---\n")  # not a shard: never fetched
    return repo_id


def download(*args):
    prepare_data.main(["--from-hub", *map(str, args), "--val-split-tokens", str(VAL)])
