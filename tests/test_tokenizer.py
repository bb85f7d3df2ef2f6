"""The shipped GPT-2 tokenizer: exact ids, offline, tiktoken and transformers identical."""

import json

import pytest
from conftest import REPO

from gpt2repro.tokenizer import (
    EOT_ID,
    TOKENIZER_DIR,
    VOCAB_SIZE,
    build_tokenizer_from_ranks,
    get_encoding,
    load_tokenizer,
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
    shipped = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text())
    rebuilt = json.loads(build_tokenizer_from_ranks().backend_tokenizer.to_str())
    assert shipped == rebuilt


def test_fingerprint_names_the_ranks():
    assert tokenizer_fingerprint() == "gpt2-bpe-sha256:306cd27f03c1a714"


def test_saved_tokenizer_reloads(tmp_path):
    load_tokenizer().save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path)(REFERENCE_TEXT).input_ids == REFERENCE_IDS
