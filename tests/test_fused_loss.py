"""The training loss path: lm_head + cross-entropy without the (tokens x vocab) logits, same numbers."""

import pytest
import torch

from modeling_gpt2repro import GPT2ReproForCausalLM, fused_causal_lm_loss
from gpt2repro.tokenizer import VOCAB_SIZE


def loss_and_grads(model, fused, **inputs):
    model.zero_grad()
    model.train(fused)  # train mode takes the fused path; eval mode (no dropout here either) the plain one
    out = model(**inputs)
    assert (out.logits is None) == fused
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("labels_kind", ["labels", "shift_labels"])
def test_fused_loss_and_gradients_equal_the_plain_path(tiny_config, labels_kind):
    model = GPT2ReproForCausalLM(tiny_config)
    window = torch.randint(0, VOCAB_SIZE, (3, 21))
    targets = window[:, 1:].clone() if labels_kind == "shift_labels" else window[:, :-1].clone()
    targets[0, :5] = -100  # ignored positions
    inputs = {"input_ids": window[:, :-1], labels_kind: targets}
    plain_loss, plain_grads = loss_and_grads(model, False, **inputs)
    fused_loss, fused_grads = loss_and_grads(model, True, **inputs)
    torch.testing.assert_close(fused_loss, plain_loss, atol=1e-5, rtol=1e-5)
    for name, grad in plain_grads.items():  # includes the tied wte / lm_head gradient
        torch.testing.assert_close(fused_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    assert fused_grads["transformer.wte.weight"][VOCAB_SIZE:].abs().max() == 0  # padding rows untouched


def test_chunking_does_not_change_the_result():
    torch.manual_seed(0)
    hidden = torch.randn(2, 37, 16, requires_grad=True)
    weight = torch.randn(VOCAB_SIZE + 47, 16, requires_grad=True)
    labels = torch.randint(0, VOCAB_SIZE, (2, 37))
    labels[1, 30:] = -100
    results = []
    for chunk_size in (1024, 16, 5):  # one chunk, several, a ragged last one
        hidden.grad = weight.grad = None
        loss = fused_causal_lm_loss(hidden, weight, labels, VOCAB_SIZE, chunk_size=chunk_size)
        (2.5 * loss).backward()  # the upstream gradient must scale the stored gradients
        results.append((loss.detach(), hidden.grad.clone(), weight.grad.clone()))
    reference_logits = hidden @ weight[:VOCAB_SIZE].t()
    expected = torch.nn.functional.cross_entropy(
        reference_logits[:, :-1].reshape(-1, VOCAB_SIZE), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    for loss, grad_hidden, grad_weight in results:
        torch.testing.assert_close(loss, expected.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad_hidden, results[0][1], atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(grad_weight, results[0][2], atol=1e-6, rtol=1e-4)


def test_training_step_never_keeps_full_logits(tiny_config):
    model = GPT2ReproForCausalLM(tiny_config)
    window = torch.randint(0, VOCAB_SIZE, (8, 65))
    n_tokens = 8 * 64  # enough tokens that logits outweigh the (V x C) weight gradient it does keep

    def largest_saved_tensor(train_mode):
        model.train(train_mode)
        sizes = []

        def pack(tensor):
            sizes.append(tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(window[:, :-1], shift_labels=window[:, 1:]).loss.backward()
        return max(sizes)

    assert largest_saved_tensor(False) >= n_tokens * VOCAB_SIZE  # the plain path keeps them: the check can fail
    assert largest_saved_tensor(True) < n_tokens * VOCAB_SIZE / 2  # the fused path keeps gradients (V x C) only


def test_fused_loss_under_bf16_autocast_is_close_to_fp32(tiny_config):
    model = GPT2ReproForCausalLM(tiny_config).train()
    window = torch.randint(0, VOCAB_SIZE, (2, 17))
    fp32 = model(window[:, :-1], shift_labels=window[:, 1:]).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(window[:, :-1], shift_labels=window[:, 1:]).loss
    assert bf16.dtype == torch.float32 and abs(bf16.item() - fp32.item()) < 0.05
