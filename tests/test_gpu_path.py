"""Decisions only a GPU would reveal, observed on the CPU: the attention form that torch.compile captures (flash needs
no mask and is_causal=True), ...
"""

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from modeling_gpt2repro import GPT2ReproForCausalLM


def attention_calls_compiled(model, **inputs):
    """(has a mask, is_causal) of every sdpa call in the graphs torch.compile captures of model(**inputs)."""
    calls = []

    def record(gm, example_inputs):
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target is F.scaled_dot_product_attention:
                calls.append((node.kwargs.get("attn_mask") is not None, node.kwargs.get("is_causal", False)))
        return gm.forward

    torch._dynamo.reset()
    out = torch.compile(model, backend=record)(**inputs)
    return calls, out


class AttentionCalls(TorchFunctionMode):
    """(has a mask, is_causal) of every sdpa call made in eager mode."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            self.calls.append((mask is not None, kwargs.get("is_causal", False)))
        return func(*args, **kwargs)


@pytest.fixture
def bf16_accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield Accelerator(cpu=True, mixed_precision="bf16")
    AcceleratorState._reset_state(reset_partial_state=True)


FLASH_FORM = (False, True)  # no mask, is_causal: the only form CUDA's flash kernel takes


def test_compiled_training_forward_and_loss_under_bf16_call_attention_without_a_mask(tiny_config, bf16_accelerator):
    # as train.py compiles it: the Accelerate-prepared model (bf16 autocast wrapped around forward), compiled
    model = bf16_accelerator.prepare(GPT2ReproForCausalLM(tiny_config))
    model.train()
    window = torch.randint(0, tiny_config.vocab_size, (2, 17))
    calls, out = attention_calls_compiled(model, input_ids=window[:, :-1], shift_labels=window[:, 1:])
    out.loss.backward()
    assert calls and set(calls) == {FLASH_FORM}, calls


def test_compiled_validation_forward_calls_attention_without_a_mask(tiny_config):
    model = GPT2ReproForCausalLM(tiny_config).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        calls, _ = attention_calls_compiled(model, input_ids=torch.randint(0, 100, (2, 16)), use_cache=False)
    assert calls and set(calls) == {FLASH_FORM}, calls


def test_eager_training_and_validation_call_attention_without_a_mask_and_name_the_paths_that_need_one(tiny_config):
    model = GPT2ReproForCausalLM(tiny_config)
    window = torch.randint(0, tiny_config.vocab_size, (2, 17))
    with AttentionCalls() as training, torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=window[:, :-1], shift_labels=window[:, 1:]).loss.backward()
    model.eval()
    with torch.no_grad(), AttentionCalls() as validation:
        model(input_ids=window[:, :-1], use_cache=False)
    assert set(training.calls) == set(validation.calls) == {FLASH_FORM}
    # Legitimately masked: HellaSwag's endings continue from a cached context (sdpa's is_causal would align the
    # causal triangle to the top left, not to the cache's end), and generation from left-padded prompts.
    with torch.no_grad(), AttentionCalls() as endings:
        cache = model(input_ids=window[:, :8], use_cache=True).cache
        model(input_ids=window[:, 8:12], cache=cache, use_cache=True)
    assert endings.calls[: tiny_config.n_layer] == [FLASH_FORM] * tiny_config.n_layer  # the context: flash form
    assert all(masked for masked, _ in endings.calls[tiny_config.n_layer :])
    padded = torch.ones(2, 8, dtype=torch.long)
    padded[0, :3] = 0
    with torch.no_grad(), AttentionCalls() as generation:
        model(input_ids=window[:, :8], attention_mask=padded, use_cache=False)
    assert all(masked for masked, _ in generation.calls)
