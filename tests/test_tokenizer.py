"""The shipped GPT-2 tokenizer: exact ids, offline, tiktoken and transformers identical."""

import json

import pytest
from conftest import REPO

from gpt2repro.tokenizer import (
    EOT_ID,
    TOKENIZER_DIR,
    VOCAB_SIZE,
    TOKENIZER_FILES,
    build_tokenizer_files,
    get_encoding,
    load_tokenizer,
    save_tokenizer,
    tokenizer_fingerprint,
)

REFERENCE_TEXT = "Hello, I'm a language model,"
REFERENCE_IDS = [15496, 11, 314, 1101, 257, 3303, 2746, 11]


def test_reference_ids_from_both_faces():
    assert get_encoding().encode_ordinary(REFERENCE_TEXT) == REFERENCE_IDS
    tokenizer = load_tokenizer()
    assert tokenizer(REFERENCE_TEXT).input_ids == REFERENCE_IDS
    assert tokenizer.decode(REFERENCE_IDS) == REFERENCE_TEXT


def test_special_token_and_vocabulary_size():
    tokenizer = load_tokenizer()
    assert len(tokenizer) == VOCAB_SIZE == get_encoding().n_vocab
    assert tokenizer.eos_token_id == tokenizer.bos_token_id == EOT_ID
    assert get_encoding().encode("<|endoftext|>", allowed_special="all") == [EOT_ID]


def test_whole_shipped_corpus_is_338025_identical_tokens():
    text = (REPO / "gpt2repro" / "assets" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    fast_ids = get_encoding().encode_ordinary(text)
    hf_ids = load_tokenizer()(text).input_ids
    assert len(fast_ids) == 338_025
    assert hf_ids == fast_ids


@pytest.mark.parametrize(
    "text", ["  trailing spaces   ", "a\n\n\nb  c\t\td", "numbers 1234567 and 3.14159", "café naïve 東京 😀", "it's we'll they've"]
)
def test_whitespace_unicode_and_contractions_agree(text):
    assert load_tokenizer()(text).input_ids == get_encoding().encode_ordinary(text)


def test_shipped_files_are_what_the_ranks_build():
    rebuilt = build_tokenizer_files()
    assert sorted(rebuilt) == sorted([*TOKENIZER_FILES, "tokenizer_config.json"])
    for name, text in rebuilt.items():
        assert (TOKENIZER_DIR / name).read_text(encoding="utf-8") == text, name
    merges = rebuilt["merges.txt"].splitlines()
    assert merges[:4] == ["#version: 0.2", "Ġ t", "Ġ a", "h e"] and len(merges) == 1 + 50_000  # as OpenAI's vocab.bpe


def test_fingerprint_names_the_ranks():
    assert tokenizer_fingerprint() == "gpt2-bpe-sha256:306cd27f03c1a714"


def test_saved_tokenizer_reloads(tmp_path):
    load_tokenizer().save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path)(REFERENCE_TEXT).input_ids == REFERENCE_IDS


# ---- the files beside every checkpoint and export: what GPT-2's clients read ----


def openai_bpe(folder, text: str) -> list[int]:
    """OpenAI's encoder.py, which transformers 4.x's slow GPT2Tokenizer and llama.cpp's converter follow: GPT-2's
    split regex, then the merges of merges.txt by line order, on vocab.json."""
    import regex
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    encoder = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")[1:-1]  # as 4.x reads it
    ranks = {tuple(line.split()): i for i, line in enumerate(lines)}
    byte_char = bytes_to_unicode()
    split = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    cache, ids = {}, []
    for piece in split.findall(text):
        if piece not in cache:
            word = [byte_char[b] for b in piece.encode("utf-8")]
            while len(word) > 1:
                rank, i = min((ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(word, word[1:])))
                if rank == len(ranks):
                    break
                word[i : i + 2] = [word[i] + word[i + 1]]
            cache[piece] = [encoder[token] for token in word]
        ids += cache[piece]
    return ids


def test_saved_files_are_gpt2s_own_tokenizer_with_the_models_context_and_nothing_of_this_machine(tmp_path):
    save_tokenizer(tmp_path, 256)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*TOKENIZER_FILES, "tokenizer_config.json"])
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    # known to transformers 4.x and 5.x (no remote code), as 4.x writes it: its AutoTokenizer(use_fast=False) reads
    # a name without "Fast" as the slow tokenizer and adds "Fast" for the default
    assert config["tokenizer_class"] == "GPT2Tokenizer"
    assert config["model_max_length"] == 256
    assert not {"is_local", "local_files_only", "name_or_path", "_commit_hash"} & set(config)
    assert config["bos_token"] == config["eos_token"] == "<|endoftext|>"
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == VOCAB_SIZE and vocab["<|endoftext|>"] == EOT_ID and vocab["ĠHello"] == 18435


def test_every_way_of_loading_the_saved_files_gives_tiktokens_ids(tmp_path):
    from transformers import AutoTokenizer, GPT2Tokenizer, GPT2TokenizerFast

    save_tokenizer(tmp_path / "all", 1024)
    text = (REPO / "gpt2repro" / "assets" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000]
    text += "  trailing   \n\n\tcafé naïve 東京 😀 it's 3.14159"
    expected = get_encoding().encode_ordinary(text)
    # each from the files a client of its kind reads, and nothing else
    only = {"fast": ["tokenizer.json"], "slow": ["vocab.json", "merges.txt"]}
    for kind, names in only.items():
        (tmp_path / kind).mkdir()
        for name in [*names, "tokenizer_config.json"]:
            (tmp_path / kind / name).write_bytes((tmp_path / "all" / name).read_bytes())
    auto = AutoTokenizer.from_pretrained(tmp_path / "all")
    assert type(auto).__name__ in ("GPT2Tokenizer", "GPT2TokenizerFast")  # transformers' own GPT-2 class
    assert auto(text).input_ids == expected
    assert GPT2TokenizerFast.from_pretrained(tmp_path / "fast")(text).input_ids == expected
    assert GPT2Tokenizer.from_pretrained(tmp_path / "slow")(text).input_ids == expected
    assert openai_bpe(tmp_path / "all", text) == expected
