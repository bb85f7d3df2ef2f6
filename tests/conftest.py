import os
import sys
from pathlib import Path

# Tests never touch the network; fail fast instead of hanging on a Hub lookup.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
