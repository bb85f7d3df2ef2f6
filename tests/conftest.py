"""What every test module shares: an offline, deterministic environment; the Shakespeare data directory; tiny
train.py runs in this process or as a command line; the launcher command for multi-process runs."""

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

# The suite runs in the user's shell, which may hold a launcher's or a library's settings. Each would change what a
# test sees: a leftover WORLD_SIZE/RANK/MASTER_ADDR (inside a torchrun or SLURM job) makes every Accelerator wait for
# a process group that never forms; ACCELERATE_* and FSDP_* change the precision and the sharding of in-process runs;
# HF_* and TRANSFORMERS_* point at the user's caches (a cached gpt2 loads where a test expects the offline error),
# endpoint, token or transfer backend; GPT2REPRO_CACHE may hold the real HellaSwag. None of them is the test's: each
# test sets what it needs (monkeypatch.setenv, or the env of its subprocess).
LAUNCHER_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                      "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT")
USER_PREFIXES = ("ACCELERATE_", "FSDP_", "TORCHELASTIC_", "PMI_", "OMPI_COMM_WORLD_", "MV2_COMM_WORLD_", "MPI_LOCAL",
                 "HF_", "HUGGINGFACE_", "HUGGING_FACE_", "TRANSFORMERS_", "TRACKIO_", "GPT2REPRO_")
for name in list(os.environ):
    if name in LAUNCHER_VARIABLES or name.startswith(USER_PREFIXES):
        del os.environ[name]
_scratch = tempfile.mkdtemp(prefix="gpt2repro-test-home-")
atexit.register(shutil.rmtree, _scratch, ignore_errors=True)
# Tests never touch the network; fail fast instead of hanging on a Hub lookup.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# ... nor read or write the user's caches: empty ones of the session's own (trackio keeps its runs where TRACKIO_DIR
# says when first imported).
os.environ["HF_HOME"] = os.path.join(_scratch, "huggingface")
os.environ["GPT2REPRO_CACHE"] = os.path.join(_scratch, "gpt2repro")
os.environ["TRACKIO_DIR"] = os.path.join(_scratch, "trackio")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

SEQ = 32
# The tiny preset (4 layers, 128 wide) on 32-token windows: a step takes tens of milliseconds.
TINY = ["--model", "tiny", "--seq-len", str(SEQ), "--log-with", "none", "--mixed-precision", "no",
        "--eval-every", "0", "--val-tokens", "512", "--warmup-steps", "2", "--lr", "3e-3"]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_config():
    from configuration_gpt2repro import GPT2ReproConfig

    # vocab stays GPT-2's: padding/tokenizer behaviour is part of what is tested.
    return GPT2ReproConfig(n_layer=2, n_head=2, n_embd=64, n_positions=64)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """~30k tokens of Shakespeare as several small shards (2,048 validation tokens), through prepare_data."""
    import prepare_data

    root = tmp_path_factory.mktemp("shakespeare")
    corpus = root / "corpus.txt"
    corpus.write_text((REPO / "gpt2repro" / "assets" / "tinyshakespeare.txt").read_text()[:120_000])
    out = root / "shards"
    prepare_data.main([str(corpus), "--out", str(out), "--shard-tokens", "8000", "--val-split-tokens", "2048",
                       "--num-proc", "1"])
    return out


def as_hub_dataset(data_dir, root, dataset, config):
    """A copy of `data_dir` under `root`, its manifest saying it was streamed from the Hub dataset `dataset`."""
    copy = root / dataset.replace("/", "--")
    copy.mkdir()
    for f in data_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["source"] = {"type": "hub", "dataset": dataset, "name": config, "split": "train", "text_column": "text",
                          "part": None}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


# ---- train.py runs ----


def run_in_process(*args):
    """train.main on the TINY layout in this process (fast), with Accelerate's process-wide state reset first."""
    from accelerate.state import AcceleratorState

    import train

    AcceleratorState._reset_state(reset_partial_state=True)
    train.main([*TINY, *map(str, args)])


def train_argv(*args) -> list[str]:
    """train.py and its flags on the TINY layout, to follow an interpreter or a launcher."""
    return [str(REPO / "train.py"), *TINY, *map(str, args)]


def run_cli(*args, launcher=(), env=None, **popen):
    """train.py's command line on the TINY layout in a subprocess, under `launcher` if given (see launcher())."""
    command = [*(launcher or [sys.executable]), *train_argv(*args)]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, **popen)


def free_port() -> int:
    """A port the OS has just handed out and nothing listens on: a fixed number collides with any other launch
    on the machine (another test session, another checkout), and a rendezvous then joins the wrong group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(config: str | None = None, *extra, port: int | None = None) -> list[str]:
    """The command that starts a script on several processes, to put before the script's path: `accelerate launch`
    with accelerate_configs/<config>, or without a config torch elastic (torch.distributed.run) on 2 local
    processes. Its rendezvous is on a free port; give `port` when several launches (machines) must meet."""
    port = str(port or free_port())
    if config is None:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", port, *map(str, extra)]
    return [sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(REPO / "accelerate_configs" / config), "--main_process_port", port, *map(str, extra)]


# ---- what a run leaves ----


def weights(checkpoint):
    return load_file(str(checkpoint / "model.safetensors"))


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def logged(run_dir, key):
    return [r[key] for r in metrics(run_dir) if key in r]


def assert_same_weights(a, b, atol=0.0):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        if atol:
            torch.testing.assert_close(wa[name], wb[name], atol=atol, rtol=0, msg=name)
        else:
            assert torch.equal(wa[name], wb[name]), name


# ---- a stand-in Hub (tests/stand_in_hub.py) and data prepared for it ----


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """~80 Shakespeare documents as JSON Lines (prepare_data and --verify-hub-tokens read them alike)."""
    text = (REPO / "gpt2repro" / "assets" / "tinyshakespeare.txt").read_text()[:120_000]
    path = tmp_path_factory.mktemp("corpus") / "plays.jsonl"
    path.write_text("".join(json.dumps({"text": text[i : i + 1500]}) + "\n" for i in range(0, len(text), 1500)))
    return path


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    """The corpus prepared here, as the stand-in Hub's repos serve it."""
    import prepare_data
    import stand_in_hub

    out = tmp_path_factory.mktemp("prepared") / "plays"
    prepare_data.main([str(corpus), "--out", str(out), "--shard-tokens", "8000",
                       "--val-split-tokens", str(stand_in_hub.VAL),
                       "--num-proc", "1"])
    return out


@pytest.fixture
def hub(tmp_path, monkeypatch):
    import stand_in_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return stand_in_hub.StandInHub(tmp_path / "hub").install(monkeypatch.setattr)


@pytest.fixture
def unreachable_hub(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE unset on a machine without network, with an empty Hub cache: every request huggingface_hub
    makes goes through this client, fails as a refused connection would, and is recorded in the returned list (a
    count, not a time, shows that no download retries happened)."""
    import httpx2
    import huggingface_hub
    from huggingface_hub.utils import _http

    requests = []

    def no_network(request):
        # huggingface_hub's once-a-day fetch of its user-agent registry is no call of ours, and not retried
        if not request.url.path.endswith("/api/agent-harnesses"):
            requests.append(request)
        raise httpx2.ConnectError("[Errno 101] Network is unreachable", request=request)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(no_network)))
    yield requests
    huggingface_hub.set_client_factory(_http.default_client_factory)


# ---- host syncs: a training step reads nothing back from the device unless it logs ----

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


@pytest.fixture
def count_reads(monkeypatch):
    """Every device-to-host read (or sync) attributed to the optimizer step during which it was made: each step of
    train.py's loop starts with learning_rate(step, ...)."""
    import train

    reads, current = {}, [None]

    def counted(name, original):
        def read(self, *args, **kwargs):
            if current[0] is not None:
                reads.setdefault(current[0], []).append(name)
            return original(self, *args, **kwargs)

        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch.cuda, "synchronize", counted("synchronize", lambda *a: None))

    def learning_rate(step, s):
        current[0] = step
        return original_learning_rate(step, s)

    original_learning_rate = train.learning_rate
    monkeypatch.setattr(train, "learning_rate", learning_rate)
    return reads
