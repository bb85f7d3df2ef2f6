"""Which attention the model trains with: FlashAttention-3 on Hopper GPUs when it can be had, else sdpa.

FlashAttention-3 comes as a pre-built kernel from the Hugging Face Hub (kernels-community/flash-attn3) through the
optional `kernels` package (pip install kernels), which transformers registers as an attention implementation.
Anything short of a working kernel (no Hopper GPU, no `kernels`, offline, a broken install) falls back to sdpa,
which takes PyTorch's flash kernel on the same GPUs (the model calls it with is_causal=True and no mask).
"""

import torch

FLASH_ATTENTION_3 = "kernels-community/flash-attn3"
ATTENTION_CHOICES = ("auto", "sdpa", "eager")


def choose_attention(setting: str, device) -> tuple[str, str | None]:
    """(attn_implementation, a one-line notice when `auto` wanted FlashAttention-3 and fell back to sdpa)."""
    if setting != "auto":
        return setting, None
    device = torch.device(device)
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] != 9:  # FA3 is built for Hopper (sm90)
        return "sdpa", None
    try:
        from transformers.integrations.hub_kernels import load_and_register_attn_kernel

        load_and_register_attn_kernel(FLASH_ATTENTION_3)  # registers it in transformers' attention interface
    except Exception as e:  # ImportError without `kernels`; offline or a broken install: anything, as sdpa works
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return "sdpa", f"notice: FlashAttention-3 unavailable ({reason}); training with sdpa"
    return FLASH_ATTENTION_3, None


__all__ = ["ATTENTION_CHOICES", "FLASH_ATTENTION_3", "choose_attention"]
