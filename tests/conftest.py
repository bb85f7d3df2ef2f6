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
