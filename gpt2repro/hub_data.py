"""Token shards on the Hugging Face Hub: download a pre-tokenized dataset repo instead of tokenizing,
check it against the source text, and publish a prepared directory as a dataset repo.

Two kinds of dataset repo download to a directory that train.py, eval_hellaswag.py and the report read like
a prepared one:

- llm.c / modded-nanogpt shards without a manifest (kjj0/finewebedu10B-gpt2: finewebedu_val_000000.bin,
  finewebedu_train_000001.bin, ...). The manifest is written here from the names and the checked headers,
  with the validation split cut to the same budget prepare_data.py writes for Hub datasets: the first
  `val_tokens` tokens of the val shard (`file_tokens` in the manifest entry); the rest of that shard is
  neither validated nor trained on, as in build-nanogpt.
- a directory prepare_data.py wrote and `push_tokens` uploaded (shards, manifest.json, a dataset card): the
  shards and the manifest come back byte for byte.

Either way the directory also gets `hub_download.json` (repository, revision, files): where the tokens came
from, for the report and the model card (`download_origin`).

A download resolves the revision and the file sizes with one `HfApi.dataset_info` call (short timeout, no
retries: offline fails in one line), checks the free space, and hands the files to `snapshot_download`
(parallel; each file is written to a temp file and renamed when complete, and a rerun skips the files already
complete, so an interrupted download resumes at the file it stopped in). Until every header has been checked,
the manifest says `complete: false`: train.py refuses the directory and prepare_data.py resumes it.
"""

import json
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gpt2repro.errors import UserError, first_line
from gpt2repro.fileio import copy_atomically, write_atomically
from gpt2repro.hub import check_repo_id, failure_reason, repo_info
from gpt2repro.token_shards import (
    HEADER_BYTES,
    LLMC_SHARD_NAME,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    SPLITS,
    ShardError,
    llmc_manifest,
    load_manifest,
    open_split,
    read_manifest_file,
    read_shard_header,
    write_manifest,
)

ORIGIN_NAME = "hub_download.json"
PENDING_KEY = "downloading"  # in the manifest of a download under way: the repository it comes from
DOWNLOAD_WORKERS = 8
PROGRESS_EVERY = 10.0  # seconds between progress lines


class HubDataError(UserError, ValueError):
    """A download, check or upload that cannot go on: the message names the problem and what to do."""


# ----------------------------------------------------------------------------------------------
# talking to the Hub


def _hub_failure(error: Exception, repo_id: str, fallback: str) -> HubDataError:
    """One line for whatever the Hub call raised: offline, no such repo, no access, no network."""
    return HubDataError(f"cannot download {repo_id}: {failure_reason(error, 'dataset')}; {fallback}")


def repo_files(repo_id: str, revision: str | None, fallback: str) -> tuple[str, dict[str, int]]:
    """The commit `revision` (default: main) resolves to, and the repository's files with their sizes."""
    try:
        info = repo_info(repo_id, "dataset", revision, files_metadata=True)
    except Exception as e:  # offline, unknown repo, no network: one message for all
        raise _hub_failure(e, repo_id, fallback) from None
    return info.sha, {s.rfilename: s.size for s in info.siblings or []}


def _fetch_manifest(repo_id: str, commit: str, fallback: str) -> tuple[dict, Path]:
    """A gpt2repro dataset repo's manifest (validated) and where huggingface_hub cached it."""
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(repo_id, MANIFEST_NAME, repo_type="dataset", revision=commit))
    except Exception as e:
        raise _hub_failure(e, repo_id, fallback) from None
    try:
        manifest = read_manifest_file(path)
    except ShardError as e:
        raise HubDataError(f"{repo_id}: {e}") from None
    if not manifest["complete"]:
        raise HubDataError(f"{repo_id} holds an unfinished preparation (its manifest says complete: false)")
    return manifest, path


# ----------------------------------------------------------------------------------------------
# download


def _llmc_plan(repo_id: str, files: dict[str, int], max_train_shards: int | None) -> dict[str, int]:
    """The llm.c shards to fetch (val, then the first `max_train_shards` train shards) and their sizes."""
    shards = {name: LLMC_SHARD_NAME.fullmatch(name) for name in files if "/" not in name}
    shards = {name: match for name, match in shards.items() if match}
    by_split = {split: sorted(n for n, m in shards.items() if m["split"] == split) for split in SPLITS}
    if not by_split["val"] or not by_split["train"]:
        raise HubDataError(
            f"{repo_id} holds no {MANIFEST_NAME} and no llm.c shards of both splits (NAME_val_000000.bin, "
            f"NAME_train_000001.bin) at its top level; it is not a pre-tokenized dataset this can read"
        )
    datasets = sorted({m["dataset"] for m in shards.values()})
    if len(datasets) > 1:
        raise HubDataError(f"{repo_id} holds shards of several datasets ({', '.join(datasets)}); not supported")
    train = by_split["train"][:max_train_shards] if max_train_shards else by_split["train"]
    return {name: files[name] for name in by_split["val"] + train}


def _tokens_in(name: str, size: int) -> int:
    if size is None or size < HEADER_BYTES or (size - HEADER_BYTES) % 2:
        raise HubDataError(f"{name}: {size} bytes on the Hub is not the size of a token shard")
    return (size - HEADER_BYTES) // 2


def _cut_val_split(manifest: dict, val_tokens: int) -> None:
    """Keep the first `val_tokens` tokens of the val shards as the val split, as prepare_data.py writes it."""
    kept, have = [], 0
    for entry in manifest["shards"]:
        if entry["split"] == "val":
            if have >= val_tokens:
                continue
            take = min(entry["tokens"], val_tokens - have)
            if take < entry["tokens"]:
                entry = dict(entry, tokens=take, file_tokens=entry["tokens"])
            have += take
        kept.append(entry)
    manifest["shards"] = kept
    manifest["splits"] = {
        split: {
            "tokens": sum(e["tokens"] for e in kept if e["split"] == split),
            "documents": None,
            "shards": sum(e["split"] == split for e in kept),
        }
        for split in SPLITS
    }


def _subset(manifest: dict, files: list[str], complete: bool) -> dict:
    """A gpt2repro manifest restricted to `files` (all val shards and the first train shards)."""
    shards = [s for s in manifest["shards"] if s["file"] in files]

    def total(split, key):
        values = [s.get(key) for s in shards if s["split"] == split]
        return None if None in values else sum(values)

    splits = {split: {"tokens": total(split, "tokens"), "documents": total(split, "documents"),
                      "shards": sum(s["split"] == split for s in shards)} for split in SPLITS}
    return dict(manifest, shards=shards, splits=splits, complete=complete)


def _check_free_space(out_dir: Path, needed: int) -> None:
    where = next(p for p in (out_dir, *out_dir.parents) if p.exists())
    free = shutil.disk_usage(where).free
    if needed > free:
        raise HubDataError(
            f"the download needs {format_bytes(needed)} but {where} has {format_bytes(free)} free; free some space, "
            "pass another --out, or fetch fewer train shards with --max-train-shards N"
        )


def _check_directory(out_dir: Path, repo_id: str, overwrite: bool) -> None:
    """Refuse a directory holding other data (unless `overwrite`); a download of the same repo continues."""
    if out_dir.exists() and not out_dir.is_dir():
        raise HubDataError(f"cannot download to {out_dir}: it is a file; pass another --out")
    manifest_path = out_dir / MANIFEST_NAME
    if overwrite:
        return
    if manifest_path.exists() and downloading(out_dir) != repo_id:
        raise HubDataError(
            f"{out_dir} holds other shards (its {MANIFEST_NAME} is not from a download of {repo_id}); "
            "pass --overwrite to replace them, or choose another --out"
        )
    if not manifest_path.exists() and any(out_dir.glob("*.bin")):
        raise HubDataError(f"{out_dir} holds .bin files but no {MANIFEST_NAME}; pass --overwrite or another --out")


def download_tokens(
    repo_id: str,
    out_dir: str | Path,
    *,
    revision: str | None = None,
    max_train_shards: int | None = None,
    val_tokens: int | None = None,
    name: str | None = None,
    text_source: dict | None = None,
    overwrite: bool = False,
    fallback: str = "or tokenize the data instead (prepare_data.py without --from-hub)",
    max_workers: int = DOWNLOAD_WORKERS,
    progress_every: float = PROGRESS_EVERY,
) -> dict:
    """Download a pre-tokenized dataset repo into `out_dir`, check it, and return its manifest.

    `val_tokens`: the validation budget for llm.c shards (None: the whole val shard); `name`, `text_source`:
    the manifest's name and the text dataset the shards were made from (e.g. {"dataset":
    "HuggingFaceFW/fineweb-edu", "name": "sample-10BT"}), for llm.c shards, which do not say; `fallback`:
    what the one-line error of a failed download suggests instead."""
    from huggingface_hub import snapshot_download

    out_dir = Path(out_dir)
    check_repo_id(repo_id, "--from-hub", HubDataError)
    _check_directory(out_dir, repo_id, overwrite)
    commit, files = repo_files(repo_id, revision, fallback)
    ours = MANIFEST_NAME in files
    if ours:
        remote, remote_path = _fetch_manifest(repo_id, commit, fallback)
        train = [s["file"] for s in remote["shards"] if s["split"] == "train"][:max_train_shards or None]
        wanted = [s["file"] for s in remote["shards"] if s["split"] == "val"] + train
        missing = [f for f in wanted if f not in files]
        if missing:
            raise HubDataError(f"{repo_id} lacks {missing[0]}, which its manifest lists; the upload did not finish")
        plan = {f: files[f] for f in wanted}
        pending = _subset(remote, wanted, complete=False)
    else:
        plan = _llmc_plan(repo_id, files, max_train_shards)
        source = _llmc_source(repo_id, commit, text_source)
        pending = _llmc_pending_manifest(plan, name or out_dir.name, source, val_tokens)
    selection = {"repo_id": repo_id, "revision": commit, "files": sorted(plan)}
    pending[PENDING_KEY] = repo_id  # until the download is complete and checked

    origin = download_origin(out_dir)
    if origin and {k: origin.get(k) for k in selection} == selection and _is_complete(out_dir):
        print(f"{out_dir} is already complete ({repo_id} at {commit[:12]})", file=sys.stderr)
        return load_manifest(out_dir)

    if overwrite and downloading(out_dir) != repo_id:  # other data goes; a download of this repo is kept
        for path in [*out_dir.glob("*.bin"), out_dir / MANIFEST_NAME, out_dir / ORIGIN_NAME]:
            path.unlink(missing_ok=True)
    needed = sum(size for file, size in plan.items() if not _have(out_dir / file, size))
    _check_free_space(out_dir, needed)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ORIGIN_NAME).unlink(missing_ok=True)  # written again once the new selection is complete
    write_manifest(out_dir, pending)  # complete: false until every header is checked
    print(f"downloading {len(plan)} files ({format_bytes(needed)} to fetch) of {repo_id} at {commit[:12]} "
          f"to {out_dir}", file=sys.stderr)
    with DownloadProgress(out_dir, plan, every=progress_every):
        try:
            snapshot_download(repo_id, repo_type="dataset", revision=commit, local_dir=out_dir,
                              allow_patterns=sorted(plan), max_workers=max_workers, tqdm_class=_QuietBar)
        except Exception as e:  # files completed so far stay, and a rerun skips them
            raise _hub_failure(e, repo_id, "rerun the same command to resume the download, " + fallback) from None

    for file, size in plan.items():  # every file, fetched now or on an earlier run
        try:
            tokens = read_shard_header(out_dir / file)
        except ShardError as e:
            (out_dir / file).unlink(missing_ok=True)  # a rerun fetches it again
            raise HubDataError(f"{e.args[0].split(';')[0]}, as downloaded from {repo_id}; deleted it: rerun to "
                               f"fetch it again, {fallback}") from None
        if tokens != _tokens_in(file, size):
            raise HubDataError(f"{out_dir / file}: {tokens:,} tokens, but {repo_id} lists it at {size:,} bytes")
    if ours:
        for entry in pending["shards"]:
            if read_shard_header(out_dir / entry["file"]) != entry.get("file_tokens", entry["tokens"]):
                raise HubDataError(f"{out_dir / entry['file']}: not the {entry['tokens']:,} tokens its manifest lists")
        if len(plan) == len(remote["shards"]):
            copy_atomically(remote_path, out_dir / MANIFEST_NAME)  # the uploaded manifest, byte for byte
        else:
            write_manifest(out_dir, {k: v for k, v in pending.items() if k != PENDING_KEY} | {"complete": True})
    else:
        manifest = dict(llmc_manifest(out_dir, [out_dir / f for f in plan]), **_llmc_identity(pending))
        if val_tokens:
            _cut_val_split(manifest, val_tokens)
        write_manifest(out_dir, manifest)
    write_atomically(out_dir / ORIGIN_NAME, json.dumps(
        dict(selection, repo_type="dataset", bytes=sum(plan.values()),
             downloaded=datetime.now(timezone.utc).isoformat(timespec="seconds")), indent=1) + "\n")
    manifest = load_manifest(out_dir)
    splits = manifest["splits"]
    print(f"{out_dir}: {splits['val']['tokens']:,} val + {splits['train']['tokens']:,} train tokens from {repo_id} "
          f"({len(plan)} files)")
    return manifest


def _llmc_source(repo_id: str, commit: str, text_source: dict | None) -> dict:
    return {"type": "hub tokens", "repo": repo_id, "revision": commit,
            "dataset": (text_source or {}).get("dataset"), "name": (text_source or {}).get("name")}


def _llmc_identity(pending: dict) -> dict:
    return {key: pending[key] for key in ("name", "source", "settings")}


def _llmc_pending_manifest(plan: dict[str, int], name: str, source: dict, val_tokens: int | None) -> dict:
    """The manifest of llm.c shards still to be fetched: complete: false, token counts from the Hub's sizes."""
    from gpt2repro.tokenizer import tokenizer_fingerprint

    shards = [{"file": f, "split": LLMC_SHARD_NAME.fullmatch(f)["split"], "tokens": _tokens_in(f, size),
               "documents": None} for f, size in plan.items()]
    return {"format_version": MANIFEST_VERSION, "name": name, "source": source, "tokenizer": tokenizer_fingerprint(),
            "settings": {"val_tokens": val_tokens, "shard_tokens": None}, "shards": shards, "splits": {}, "skipped_documents": 0, "empty_documents": 0,
            "complete": False}


def _have(path: Path, size: int) -> bool:
    return path.is_file() and path.stat().st_size == size


def _is_complete(out_dir: Path) -> bool:
    try:
        return load_manifest(out_dir)["complete"]
    except ShardError:
        return False


def download_origin(data_dir: str | Path) -> dict | None:
    """Where a downloaded directory's tokens came from ({"repo_id", "revision", ...}); None if not downloaded."""
    path = Path(data_dir) / ORIGIN_NAME
    try:
        origin = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return origin if isinstance(origin, dict) and origin.get("repo_id") else None


def downloading(data_dir: str | Path) -> str | None:
    """The repository a directory's tokens were (or are being) downloaded from; None if prepared here."""
    try:
        manifest = read_manifest_file(Path(data_dir) / MANIFEST_NAME)
    except ShardError:
        return None
    origin = download_origin(data_dir)
    if manifest.get(PENDING_KEY):
        return manifest[PENDING_KEY]
    return origin["repo_id"] if origin else None


# ----------------------------------------------------------------------------------------------
# progress


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def progress_line(done: int, total: int, seconds: float) -> str:
    """"3.1 GB of 20.1 GB (15%), 210.0 MB/s, ETA 1m21s": bytes, rate and time left."""
    rate = done / seconds if seconds > 0 else 0.0
    eta = format_duration((total - done) / rate) if rate > 0 else "unknown"
    percent = 100 * done / total if total else 100
    return f"{format_bytes(done)} of {format_bytes(total)} ({percent:.0f}%), {format_bytes(rate)}/s, ETA {eta}"


class _QuietBar(tqdm):
    """huggingface_hub's own bars stay silent: their totals grow as files start, and DownloadProgress
    reports the whole download instead."""

    def __init__(self, *args, **kwargs):
        kwargs.pop("name", None)
        super().__init__(*args, **{**kwargs, "disable": True})


class DownloadProgress:
    """Prints, every `every` seconds, the bytes of the planned files that have landed in `out_dir` (complete
    files, and huggingface_hub's temp files of those in flight), the rate and the time left."""

    def __init__(self, out_dir: Path, plan: dict[str, int], every: float = PROGRESS_EVERY, stream=None):
        self.out_dir, self.plan, self.every, self.stream = out_dir, plan, every, stream or sys.stderr
        self.created = time.time()  # temp files older than this are leftovers of a killed run, not in flight
        self.baseline = self.landed()
        self.total = sum(plan.values()) - self.baseline
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def landed(self) -> int:
        done = sum(size for file, size in self.plan.items() if _have(self.out_dir / file, size))
        in_flight = self.out_dir / ".cache" / "huggingface" / "download"
        if in_flight.is_dir():
            for path in in_flight.rglob("*.incomplete"):
                try:
                    stat = path.stat()
                except FileNotFoundError:  # renamed into place meanwhile: counted with the complete files
                    continue
                done += stat.st_size if stat.st_mtime >= self.created else 0
        return done

    def line(self) -> str:
        done = min(max(self.landed() - self.baseline, 0), self.total)
        return progress_line(done, self.total, time.perf_counter() - self.start)

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            print(f"download: {self.line()}", file=self.stream, flush=True)

    def __enter__(self):
        self.start = time.perf_counter()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        if exc[0] is None:
            print(f"download: {self.line()}", file=self.stream, flush=True)


# ----------------------------------------------------------------------------------------------
# check a download against the source text


def verify_tokens(
    data_dir: str | Path,
    documents: Iterator[str],
    n_documents: int,
    encode: Callable[[list[str]], tuple[np.ndarray, np.ndarray]],
    label: str,
) -> tuple[bool, str]:
    """Tokenize the first `n_documents` of `documents` here (`encode`: prepare_data's document convention) and
    compare them with the start of `data_dir`'s val split. Returns (match, one line saying so)."""
    _, shards = open_split(data_dir, "val")
    theirs = np.concatenate([np.asarray(s) for s in shards]) if shards else np.empty(0, np.uint16)
    position, count = 0, 0
    for count, text in enumerate(documents, 1):
        tokens, _ = encode([text])
        window = theirs[position : position + len(tokens)]
        differs = np.flatnonzero(window != tokens[: len(window)])
        if len(differs):
            at = position + int(differs[0])
            return False, (
                f"mismatch: from token {at:,} (in document {count:,} of {label}) the tokens differ: tokenized here "
                f"{int(tokens[differs[0]])}, in {data_dir} {int(window[differs[0]])}; these are not the tokens this "
                "project makes, so a validation loss on them compares only with runs on the same download"
            )
        position += len(window)
        if len(window) < len(tokens):  # the val split ends inside this document
            break
        if count == n_documents:
            break
    if count == 0:
        raise HubDataError(f"{label} yielded no documents to compare with")
    return True, (
        f"match: the first {count:,} documents of {label} tokenize here to the same {position:,} tokens that open "
        f"{data_dir}'s validation split"
    )


# ----------------------------------------------------------------------------------------------
# publish


def dataset_card(manifest: dict, repo_id: str, commit: str) -> str:
    """README.md of a token dataset repo: where the tokens come from, their format and counts, how they were made
    and how to download them."""
    from huggingface_hub import DatasetCard, DatasetCardData

    source = manifest.get("source") or {}
    text = source.get("dataset")
    if text:
        config = f" ({source['name']})" if source.get("name") else ""
        origin = f"[{text}](https://huggingface.co/datasets/{text}){config}"
    elif source.get("type") == "files":
        origin = f"{source.get('files')} local file(s) ({source.get('bytes') or 0:,} bytes)"
    else:
        origin = f"a {source.get('type', 'unknown')} source"
    splits = manifest["splits"]
    rows = [f"| {split} | {splits[split]['tokens']:,} | "
            f"{'n/a' if splits[split].get('documents') is None else format(splits[split]['documents'], ',')} | "
            f"{splits[split]['shards']} |" for split in SPLITS]
    made_by = manifest.get("made_by") or {}
    card_data = DatasetCardData(
        pretty_name=f"{manifest['name']} (GPT-2 tokens)", task_categories=["text-generation"],
        tags=["gpt2", "tokenized", "llm.c", "gpt2repro"], source_datasets=[text] if text else None,
    )
    body = "\n".join([
        f"# {manifest['name']}: GPT-2 tokens",
        "",
        f"The text of {origin}, tokenized with OpenAI's GPT-2 BPE (`{manifest['tokenizer']}`) by gpt2repro's "
        "`prepare_data.py`: each document is `<|endoftext|>` followed by its tokens, in the source's order.",
        "",
        "| split | tokens | documents | shards |",
        "|---|---|---|---|",
        *rows,
        "",
        "Format: llm.c / modded-nanogpt `.bin` shards, a header of 256 int32 (magic 20240520, version 1, token "
        "count) then the tokens as uint16; `manifest.json` lists every shard with its split, token count and sha256. "
        "The validation split comes first.",
        "",
        "## Made with",
        "",
        "```bash",
        made_by.get("command") or "n/a",
        "```",
        "",
        f"at gpt2repro commit `{made_by.get('commit') or commit}`.",
        "",
        "## Use",
        "",
        "```bash",
        f"python prepare_data.py --from-hub {repo_id} --out data/{manifest['name']}   # gpt2repro",
        "```",
        "",
    ])
    return str(DatasetCard(f"---\n{card_data.to_yaml()}\n---\n{body}"))


def push_tokens(data_dir: str | Path, repo_id: str, private: bool = False, commit: str = "unknown") -> str:
    """Upload a prepared directory as the dataset repo `repo_id`: the shards (huggingface_hub's resumable
    folder upload: rerun to resume), then the manifest and a dataset card in one last commit, so a repo with a
    manifest has every shard it lists. Returns the repo's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    check_repo_id(repo_id, "--push-to-hub", HubDataError)
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    if not (data_dir / MANIFEST_NAME).is_file():
        raise HubDataError(f"{data_dir} has no {MANIFEST_NAME} of its own (llm.c shards, or parts prepared on "
                           "several machines); push a directory prepare_data.py wrote in one part")
    if not manifest["complete"]:
        raise HubDataError(f"{data_dir}: preparation did not finish; rerun the same prepare_data.py command first")
    for entry in manifest["shards"]:
        if read_shard_header(data_dir / entry["file"]) != entry.get("file_tokens", entry["tokens"]):
            raise HubDataError(f"{data_dir / entry['file']}: does not match the manifest; prepare it again")
    api = HfApi()
    shards = [entry["file"] for entry in manifest["shards"]]
    try:
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=data_dir, allow_patterns=shards,
                          commit_message=f"{len(shards)} token shards of {manifest['name']}")
        api.create_commit(repo_id=repo_id, repo_type="dataset", commit_message="manifest and dataset card", operations=[
            CommitOperationAdd(MANIFEST_NAME, str(data_dir / MANIFEST_NAME)),
            CommitOperationAdd("README.md", dataset_card(manifest, repo_id, commit).encode()),
        ])
    except Exception as e:
        from huggingface_hub.errors import OfflineModeIsEnabled

        why = "HF_HUB_OFFLINE is set (offline mode); unset it" if isinstance(e, OfflineModeIsEnabled) else \
            first_line(e, with_type=True, limit=1000)
        raise HubDataError(f"cannot push {data_dir} to {repo_id}: {why}; rerun the same command to resume") from None
    return str(url)
