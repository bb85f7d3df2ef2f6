"""Configuration of the GPT-2 reproduction: GPT-2's field names, defaults of GPT-2 (124M)."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

# GPT-2's four published sizes, named like every preset in this project (lowercase, size in parameters),
# plus a tiny one that trains on a laptop CPU in minutes.
PRESETS = {
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-350m": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-774m": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-1558m": dict(n_layer=48, n_head=25, n_embd=1600),
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, n_positions=256),  # ~7M, most of it embeddings
}
# The same sizes under their Hugging Face Hub names.
HUB_NAMES = {"gpt2": "gpt2-124m", "gpt2-medium": "gpt2-350m", "gpt2-large": "gpt2-774m", "gpt2-xl": "gpt2-1558m"}


@strict
class GPT2ReproConfig(PreTrainedConfig):
    model_type = "gpt2repro"
    keys_to_ignore_at_inference = ["cache"]
    # transformers' generic code (DynamicCache, masks, generation) asks for these names.
    attribute_map = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    }

    vocab_size: int = 50257  # the tokenizer's ids: the only ones ever predicted
    pad_vocab_to_multiple_of: int = 64  # embedding rows padded to 50304: faster matmuls, never predicted
    n_positions: int = 1024  # context length
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02  # GPT-2 init std; residual projections get 0.02/sqrt(2*n_layer)
    embd_pdrop: float | int = 0.0  # no dropout when pretraining on one pass of fresh data
    attn_pdrop: float | int = 0.0
    resid_pdrop: float | int = 0.0
    use_cache: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    pad_token_id: int | None = None
    tie_word_embeddings: bool = True  # lm_head shares wte (transformers unties weights without this field)

    @property
    def padded_vocab_size(self) -> int:
        multiple = self.pad_vocab_to_multiple_of
        return -(-self.vocab_size // multiple) * multiple

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPT2ReproConfig":
        """A size preset by its name (case-insensitive) or its Hub name: gpt2-124m or gpt2, tiny, ..."""
        key = HUB_NAMES.get(name.lower(), name.lower())
        if key not in PRESETS:
            choices = f"{', '.join(PRESETS)} (or {', '.join(HUB_NAMES)})"
            raise ValueError(f"unknown model preset {name!r}; choose one of: {choices}")
        return cls(**{**PRESETS[key], **overrides})

    def validate_architecture(self):
        """Called by @strict at construction: refuse shapes the model cannot be built with."""
        for name in ("vocab_size", "pad_vocab_to_multiple_of", "n_positions", "n_embd", "n_layer", "n_head"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GPT2ReproConfig.{name} must be a positive integer, got {getattr(self, name)}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPT2ReproConfig: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"try n_head={next(h for h in range(self.n_head, 0, -1) if self.n_embd % h == 0)}"
            )
        for name in ("embd_pdrop", "attn_pdrop", "resid_pdrop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"GPT2ReproConfig.{name} must be in [0, 1), got {getattr(self, name)}")


__all__ = ["GPT2ReproConfig", "HUB_NAMES", "PRESETS"]
