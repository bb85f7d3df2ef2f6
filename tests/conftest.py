import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Tests never touch the network; fail fast instead of hanging on a Hub lookup.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# ... nor write to the user's caches: trackio keeps its runs where TRACKIO_DIR says when first imported.
os.environ.setdefault("TRACKIO_DIR", tempfile.mkdtemp(prefix="gpt2repro-test-trackio-"))
atexit.register(shutil.rmtree, os.environ["TRACKIO_DIR"], ignore_errors=True)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pytest  # noqa: E402
import torch  # noqa: E402


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
def shakespeare_shards(tmp_path_factory):
    """~30k tokens of Shakespeare as several small shards (2,048 validation tokens), through prepare_data."""
    import prepare_data

    root = tmp_path_factory.mktemp("shakespeare")
    corpus = root / "corpus.txt"
    corpus.write_text((REPO / "gpt2repro" / "assets" / "tinyshakespeare.txt").read_text()[:120_000])
    out = root / "shards"
    prepare_data.main([str(corpus), "--out", str(out), "--shard-tokens", "8000", "--val-split-tokens", "2048",
                       "--num-proc", "1"])
    return out
