"""validation.py: exactly the targets asked for, exact bits per byte, one budget for every command."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from transformers import GPT2Config, GPT2LMHeadModel

import eval_hellaswag
import prepare_data
from gpt2repro import validation
from gpt2repro.settings import PRESETS, Settings
from gpt2repro.token_shards import VAL_SPLIT_TOKENS, VAL_TOKENS, ShardedTokenLoader, write_shard
from gpt2repro.tokenizer import EOT_ID, get_encoding


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    # A wide init makes log-probabilities differ by nats between tokens: a wrong position is far off.
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=128, initializer_range=0.3)).eval()


@pytest.fixture
def val_dir(tmp_path):
    """llm.c-named shards with no manifest: two val shards of text with <|endoftext|> between documents."""
    encoding = get_encoding()
    corpus = (REPO / "gpt2repro" / "assets" / "tinyshakespeare.txt").read_text()[:6000].split("\n\n")
    tokens = np.concatenate([[EOT_ID, *encoding.encode_ordinary(doc)] for doc in corpus])
    assert len(tokens) > 600
    write_shard(tmp_path / "tiny_val_000000.bin", tokens[:300])
    write_shard(tmp_path / "tiny_val_000001.bin", tokens[300:600])
    write_shard(tmp_path / "tiny_train_000001.bin", tokens[600:900])  # never read
    return tmp_path


def val_stream(val_dir) -> torch.Tensor:
    shards = [np.fromfile(val_dir / f"tiny_val_00000{i}.bin", np.uint16)[512:] for i in (0, 1)]  # past the header
    return torch.from_numpy(np.concatenate(shards).astype(np.int64))


def test_loss_and_bits_per_byte_are_exact_over_exactly_val_tokens_targets(gpt2, val_dir):
    tokens, encoding = val_stream(val_dir), get_encoding()
    nats = []
    with torch.no_grad():
        for start in range(0, 500, 64):  # 7 windows of 64, one of 52; one crosses the shard boundary
            window = tokens[start : min(start + 64, 500) + 1]
            nats += F.cross_entropy(gpt2(window[None, :-1]).logits[0], window[1:], reduction="none").tolist()
    targets = tokens[1:501].tolist()
    text = b"".join(encoding.decode_single_token_bytes(t) for t in targets if t != EOT_ID)
    text_nats = sum(n for n, t in zip(nats, targets) if t != EOT_ID)
    assert EOT_ID in targets  # the documents' separators are scored but carry no bytes
    for batch_size in (1, 3):
        result = validation.validation_loss(gpt2, val_dir, 500, seq_len=64, batch_size=batch_size)
        assert result["val_tokens"] == 500 and result["val_bytes"] == len(text)
        assert result["val_loss"] == pytest.approx(sum(nats) / 500, abs=1e-5)
        assert result["val_bpb"] == pytest.approx(text_nats / math.log(2) / len(text), abs=1e-5)


def test_the_default_is_the_whole_split_and_more_is_refused_up_front(gpt2, val_dir):
    assert validation.validation_loss(gpt2, val_dir, seq_len=64)["val_tokens"] == 599  # 600 tokens, 599 targets
    with pytest.raises(validation.ValidationError, match="--val-tokens 600 exceeds the 599 validation tokens"):
        validation.validation_loss(gpt2, val_dir, 600, seq_len=64)


def test_validation_reads_prepare_data_output_like_the_training_loader(tmp_path, gpt2):
    corpus = (REPO / "gpt2repro" / "assets" / "tinyshakespeare.txt").read_text()
    for i in range(2):
        (tmp_path / f"doc{i}.txt").write_text(corpus[i * 3000 : (i + 1) * 3000])
    for index in range(2):  # two machines' parts: data/part-0000i-of-00002, validation in part 0
        prepare_data.main([str(tmp_path / "doc0.txt"), str(tmp_path / "doc1.txt"), "--out", str(tmp_path / "data"),
                           "--val-split-tokens", "400", "--shard-tokens", "150", "--num-proc", "1",
                           "--num-shards", "2", "--shard-index", str(index)])  # fmt: skip
    assert not list((tmp_path / "data").glob("*.bin"))  # the shards live in the part directories

    loader = ShardedTokenLoader(tmp_path / "data", split="val", batch_size=5, seq_len=64)
    windows = loader.next_batch()  # the first 5 windows of 64 + 1 tokens, crossing shard boundaries
    with torch.no_grad():
        expected = F.cross_entropy(gpt2(windows[:, :-1]).logits.flatten(0, 1), windows[:, 1:].flatten()).item()
    result = validation.validation_loss(gpt2, tmp_path / "data", 320, seq_len=64, batch_size=2)
    assert result["val_loss"] == pytest.approx(expected, abs=1e-5)


def test_one_budget_the_hub_split_holds_what_every_preset_and_the_eval_score_by_default():
    # prepare_data writes VAL_TOKENS targets (+1 token) for Hub data; nothing else restates the budget:
    # every training preset and eval_hellaswag score the whole split unless told otherwise.
    assert VAL_SPLIT_TOKENS == VAL_TOKENS + 1 == 10_485_761
    assert prepare_data.default_val_split_tokens(SimpleNamespace(size_bytes=None)) == VAL_SPLIT_TOKENS
    assert Settings().val_tokens == 0 and all("val_tokens" not in p for p in PRESETS.values())
    assert eval_hellaswag.parse_args(["--model", "m"]).val_tokens == 0


def test_windows_per_forward_keeps_cpu_forwards_near_1024_tokens():
    assert validation.windows_per_forward("cpu", 256) == 4 and validation.windows_per_forward("cpu", 2048) == 1
    assert validation.windows_per_forward("cuda", 1024) == 16
