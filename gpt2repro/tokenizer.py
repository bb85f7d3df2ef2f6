"""The GPT-2 tokenizer, offline: one loader for the whole project.

Two faces of the same BPE, built from OpenAI's merge ranks shipped in gpt2repro/assets/tokenizer/:
- `get_encoding()`: a tiktoken encoder, several times faster than `tokenizers`, for bulk work (prepare_data).
- `load_tokenizer()`: a `PreTrainedTokenizerFast`, saved with every checkpoint so that
  `AutoTokenizer.from_pretrained(checkpoint)` works anywhere.
Both produce identical ids (tests/test_tokenizer.py checks it on the whole shipped corpus).

    python -m gpt2repro.tokenizer --rebuild   # regenerate gpt2repro/assets/tokenizer/ from the ranks
"""

import argparse
import functools
import hashlib
from pathlib import Path

TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "tokenizer"
RANKS_FILE = TOKENIZER_DIR / "gpt2.tiktoken"
EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
VOCAB_SIZE = 50257  # 50,256 merges + <|endoftext|>

# GPT-2's pre-tokenizer split. tiktoken wants possessive quantifiers (faster, same result);
# the `tokenizers` regex engine does not support them.
_SPLIT_TIKTOKEN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_SPLIT_HF = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+$|\s+(?!\S)|\s"""


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
    """The GPT-2 `PreTrainedTokenizerFast`: shipped files by default, or any local dir / Hub id."""
    from transformers import AutoTokenizer

    if name_or_path is None:
        name_or_path = TOKENIZER_DIR
    return AutoTokenizer.from_pretrained(str(name_or_path))


def build_tokenizer_from_ranks():
    """Convert the tiktoken ranks into a `PreTrainedTokenizerFast` (used to make the shipped files)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(
        vocab_file=str(RANKS_FILE), pattern=_SPLIT_HF, extra_special_tokens=[EOT_TOKEN]
    ).converted()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOT_TOKEN,
        eos_token=EOT_TOKEN,
        unk_token=EOT_TOKEN,
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )
    assert len(tokenizer) == VOCAB_SIZE and tokenizer.convert_tokens_to_ids(EOT_TOKEN) == EOT_ID
    return tokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rebuild", action="store_true", help="rewrite the HF tokenizer files in gpt2repro/assets/tokenizer/")
    args = parser.parse_args()
    if not args.rebuild:
        parser.print_help()
        return
    tokenizer = build_tokenizer_from_ranks()
    tokenizer.save_pretrained(str(TOKENIZER_DIR))
    # Compact JSON: less than half the bytes in git, same content.
    tokenizer.backend_tokenizer.save(str(TOKENIZER_DIR / "tokenizer.json"), pretty=False)
    print(f"wrote the GPT-2 tokenizer files to {TOKENIZER_DIR}")


if __name__ == "__main__":
    main()
