"""The GPT-2 tokenizer, offline: one loader for the whole project.

Two faces of the same BPE, built from OpenAI's merge ranks shipped in gpt2repro/assets/tokenizer/:
- `get_encoding()`: a tiktoken encoder, several times faster than `tokenizers`, for bulk work (prepare_data).
- `load_tokenizer()`: the transformers GPT-2 tokenizer; `save_tokenizer()` writes its files beside every
  checkpoint and export, as OpenAI's gpt2 repo has them, so that `AutoTokenizer.from_pretrained(folder)` loads
  GPT-2's own tokenizer class in transformers 4.x and 5.x alike with no remote code: tokenizer.json for the fast
  tokenizer, vocab.json + merges.txt for the slow one (transformers 4.x, llama.cpp's converter), and a
  tokenizer_config.json naming `GPT2Tokenizer` with the model's context as `model_max_length`.
Both faces produce identical ids (tests/test_tokenizer.py checks it on the whole shipped corpus).

    python -m gpt2repro.tokenizer --rebuild   # regenerate gpt2repro/assets/tokenizer/ from the ranks
"""

import argparse
import functools
import hashlib
import json
from pathlib import Path

from gpt2repro.fileio import write_files

TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "tokenizer"
RANKS_FILE = TOKENIZER_DIR / "gpt2.tiktoken"
EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
VOCAB_SIZE = 50257  # 256 bytes + 50,000 merges + <|endoftext|>
# The files a GPT-2 tokenizer folder holds (OpenAI's gpt2 repo has the same names). tokenizer_config.json is written
# per folder: it carries the model's context length.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt")
TOKENIZER_CONFIG = "tokenizer_config.json"
# The class every transformers version knows for GPT-2, by the name transformers 4.x's own save_pretrained writes
# (the "Fast" suffix dropped): 4.x's AutoTokenizer then gives the fast tokenizer, and the slow one with
# use_fast=False (named "GPT2TokenizerFast", it gives the fast one either way); 5.x has one GPT-2 tokenizer by this
# name. Not 5.x's generic "TokenizersBackend", which 4.x cannot place, nor a class that makes AutoTokenizer read
# config.json (whose auto_map then asks for remote code).
TOKENIZER_CLASS = "GPT2Tokenizer"

# GPT-2's pre-tokenizer split as tiktoken writes it: possessive quantifiers (faster, same result). The transformers
# files use GPT-2's original regex (tokenizers' ByteLevel pre-tokenizer); the tests check both give the same ids.
_SPLIT_TIKTOKEN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


@functools.cache
def get_encoding():
    """The exact GPT-2 tiktoken encoding, built offline from the shipped ranks."""
    import tiktoken
    import tiktoken.load

    return tiktoken.Encoding(
        name="gpt2",
        mergeable_ranks=tiktoken.load.load_tiktoken_bpe(str(RANKS_FILE)),
        special_tokens={EOT_TOKEN: EOT_ID},
        pat_str=_SPLIT_TIKTOKEN,
    )


@functools.cache
def tokenizer_fingerprint() -> str:
    """Identity of the BPE: the sha256 of the ranks. Shards record it; readers compare it."""
    return "gpt2-bpe-sha256:" + hashlib.sha256(RANKS_FILE.read_bytes()).hexdigest()[:16]


@functools.cache
def token_bytes():
    """UTF-8 byte length of each token id's text (uint8, VOCAB_SIZE entries); 0 for <|endoftext|>, which
    stands for no text. Validation bits-per-byte divides by the bytes of the tokens it scores."""
    import numpy as np

    encoding = get_encoding()
    lengths = [len(encoding.decode_single_token_bytes(i)) for i in range(VOCAB_SIZE)]
    lengths[EOT_ID] = 0
    return np.array(lengths, dtype=np.uint8)


def load_tokenizer(name_or_path: str | Path | None = None):
    """The GPT-2 tokenizer of transformers: shipped files by default, or any local dir / Hub id."""
    from transformers import AutoTokenizer

    if name_or_path is None:
        name_or_path = TOKENIZER_DIR
    return AutoTokenizer.from_pretrained(str(name_or_path))


def tokenizer_config(model_max_length: int) -> dict:
    """tokenizer_config.json: the class, the special tokens, the context length; nothing of the machine that saved it
    (transformers 5's own save_pretrained adds is_local and local_files_only)."""
    return {
        "tokenizer_class": TOKENIZER_CLASS,
        "model_max_length": int(model_max_length),
        "bos_token": EOT_TOKEN,
        "eos_token": EOT_TOKEN,
        "unk_token": EOT_TOKEN,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,  # decode gives back the text exactly (4.x's default was True)
        "errors": "replace",
    }


def save_tokenizer(folder: str | Path, model_max_length: int) -> None:
    """Write the GPT-2 tokenizer files into `folder` (beside a model), with the model's context length."""
    files = {name: TOKENIZER_DIR / name for name in TOKENIZER_FILES}
    Path(folder).mkdir(parents=True, exist_ok=True)
    write_files(Path(folder), {**files, TOKENIZER_CONFIG: json.dumps(tokenizer_config(model_max_length), indent=2)})


def _merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """GPT-2's merges in order, recovered from the ranks: the token of rank r was made by merging the two parts that
    byte-pair encoding with the ranks below r leaves of it."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            candidates = [(ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            best, i = min(candidates)
            if best >= rank:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2:
            raise ValueError(f"rank {rank} ({token!r}) is not a merge of two lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def build_tokenizer_files() -> dict[str, str]:
    """The shipped files, made from the tiktoken ranks: vocab.json and merges.txt as OpenAI's encoder.json and
    vocab.bpe (byte-level strings), tokenizer.json as transformers' GPT-2 tokenizer builds it from them, and
    tokenizer_config.json for GPT-2's 1,024-token context."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    import tiktoken.load

    ranks = tiktoken.load.load_tiktoken_bpe(str(RANKS_FILE))
    byte_char = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(byte_char[b] for b in token)

    vocab = {text(token): rank for token, rank in sorted(ranks.items(), key=lambda item: item[1])}
    merges = [(text(a), text(b)) for a, b in _merges_from_ranks(ranks)]
    backend = Tokenizer(BPE(vocab=dict(vocab), merges=list(merges), dropout=None, continuing_subword_prefix="",
                            end_of_word_suffix="", fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split regex
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens([AddedToken(EOT_TOKEN, special=True, normalized=False)])
    vocab[EOT_TOKEN] = EOT_ID
    if len(vocab) != VOCAB_SIZE or backend.get_vocab_size() != VOCAB_SIZE:
        raise ValueError(f"the ranks make {len(vocab)} tokens, not GPT-2's {VOCAB_SIZE}")
    return {
        "tokenizer.json": backend.to_str(),  # compact: less than half the bytes in git, same content
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        TOKENIZER_CONFIG: json.dumps(tokenizer_config(1024), indent=2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rebuild", action="store_true", help="rewrite the HF tokenizer files in gpt2repro/assets/tokenizer/")
    args = parser.parse_args()
    if not args.rebuild:
        parser.print_help()
        return
    write_files(TOKENIZER_DIR, build_tokenizer_files())
    print(f"wrote the GPT-2 tokenizer files to {TOKENIZER_DIR}")


if __name__ == "__main__":
    main()
