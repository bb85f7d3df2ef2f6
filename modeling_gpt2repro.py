"""GPT-2 as a Hugging Face model: nanoGPT's model, in transformers' clothes.

Read top to bottom: attention, MLP, block, the pre-trained base class (init), the transformer,
the language model (loss, generation, conversion to and from OpenAI's GPT-2 checkpoint).
Parameter names match OpenAI's checkpoint, so interop is a transpose, not a rename table.
"""

import math

import torch
import torch.nn as nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

try:  # loaded as remote code from a checkpoint folder
    from .configuration_gpt2repro import GPT2ReproConfig
except ImportError:  # imported from the repo (python train.py, tests)
    from configuration_gpt2repro import GPT2ReproConfig


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Reference attention, written out: the baseline that sdpa / flash must match."""
    scores = torch.matmul(query, key.transpose(-2, -1)) * scaling  # (B, nh, T, T_kv)
    if attention_mask is not None:  # 4-D additive or boolean mask from create_causal_mask
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    elif module.is_causal and query.shape[-2] > 1:  # sdpa-style implicit causal mask
        q_len, kv_len = query.shape[-2], key.shape[-2]
        causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, T, nh, hs)
    return output, weights


class GPT2ReproAttention(nn.Module):
    def __init__(self, config: GPT2ReproConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.n_embd // config.n_head
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.is_residual_projection = True  # GPT-2 scales its init by 1/sqrt(2 * n_layer)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states, attention_mask=None, cache: Cache | None = None, **kwargs):
        B, T, C = hidden_states.shape
        qkv = self.c_attn(hidden_states).view(B, T, 3, self.config.n_head, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (B, nh, T, hs)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)  # (B, nh, T_kv, hs)

        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.config.attn_pdrop if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        output = output.reshape(B, T, C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(output)), weights


class GPT2ReproMLP(nn.Module):
    def __init__(self, config: GPT2ReproConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.is_residual_projection = True
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class GPT2ReproBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPT2ReproConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPT2ReproAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPT2ReproMLP(config)

    def forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):
        attn_output, _ = self.attn(self.ln_1(hidden_states), attention_mask, cache, **kwargs)
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class GPT2ReproPreTrainedModel(PreTrainedModel):
    config_class = GPT2ReproConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GPT2ReproBlock"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_projection", False):
                std /= math.sqrt(2 * self.config.n_layer)  # keeps the residual stream's variance flat
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class GPT2ReproModel(GPT2ReproPreTrainedModel):
    """The transformer: embeddings, blocks, final LayerNorm. Returns hidden states."""

    def __init__(self, config: GPT2ReproConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([GPT2ReproBlock(config, i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, new_embeddings):
        self.wte = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)  # (B, T, C)
        if use_cache is None:  # a KV cache only helps decoding; training would build one per step for nothing
            use_cache = self.config.use_cache and not self.training
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)

        past_length = cache.get_seq_length() if cache is not None else 0
        given_positions = position_ids  # given positions may mark packed sequences, which need a full mask
        if position_ids is None:
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0) + past_length
        if past_length + inputs_embeds.shape[1] > self.config.n_positions:
            raise ValueError(
                f"sequence of {past_length + inputs_embeds.shape[1]} tokens is longer than the model's context "
                f"(n_positions={self.config.n_positions}); truncate the input"
            )

        # None when a plain causal mask suffices: sdpa then takes its fast is_causal path (flash on GPU). Positions we
        # made up are not passed: under torch.compile the packed-sequence check on them cannot be decided, and a full
        # mask would be built, which sends CUDA's sdpa to a slower kernel.
        mask = create_causal_mask(
            config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=cache,
            position_ids=given_positions,
        )
        hidden_states = self.drop(inputs_embeds + self.wpe(position_ids))
        for block in self.h:
            hidden_states = block(hidden_states, mask, cache if use_cache else None, **kwargs)
        hidden_states = self.ln_f(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache if use_cache else None)


# ---- training loss without the (tokens x vocab) logits ----
# At GPT-2's widths the lm_head is the largest matmul and its logits the largest activation: B*T x 50,257
# floats, kept in fp32 for the softmax and again for its gradient. Like Liger-Kernel's fused linear
# cross-entropy, we walk the tokens in chunks and compute each chunk's loss *and* its gradients in the
# forward pass, so no logits outlive their chunk and backward is a multiplication.


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight[:vocab_size].T` against `targets`, chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, vocab_size: int, chunk_size: int, dtype: torch.dtype):
        # hidden (N, C), weight (V_padded, C), targets (N,) with -100 where ignored; matmuls run in `dtype`.
        w = weight.to(dtype)
        # The padding rows are computed (a multiple-of-64 width makes every matmul here faster) but masked out of
        # the softmax: they get probability 0, so no gradient, and never count in the loss.
        padding = torch.arange(weight.shape[0], device=weight.device) >= vocab_size
        loss = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden)
        for start in range(0, hidden.shape[0], chunk_size):
            h, t = hidden[start : start + chunk_size].to(dtype), targets[start : start + chunk_size]
            keep = (t != -100).unsqueeze(1)  # (n, 1)
            t = t.masked_fill(~keep.squeeze(1), 0).unsqueeze(1)  # any valid index: the row is masked out
            logits = (h @ w.t()).masked_fill_(padding, float("-inf"))  # (n, V_padded)
            logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # fp32 whatever the matmul dtype
            target_logp = logp.gather(1, t)  # (n, 1)
            loss -= target_logp.masked_fill(~keep, 0.0).sum()
            # d(loss)/d(logits) = softmax - one_hot(target), rows of ignored tokens zeroed through h and the output.
            # The target's entry p - 1 is computed in fp32 (it rounds to 0 in bf16 when p is near 1) and scattered
            # after the cast, so that compile fuses log_softmax, exp and cast into one pass without an fp32 copy.
            grad_logits = logp.exp_().to(dtype).scatter_(1, t, torch.expm1(target_logp).to(dtype))
            grad_hidden[start : start + chunk_size] = (grad_logits @ w) * keep
            # Summed in the matmul dtype, in place: an fp32 sum costs a pass over (V, C) per chunk (and compile
            # keeps every chunk's term alive to fuse the adds), while the bf16 sum's error stays below that
            # of the plain autocast path's gradient (measured, benchmarks/RESULTS.md).
            terms = (grad_logits.t(), h * keep)
            grad_w = torch.mm(*terms) if start == 0 else grad_w.addmm_(*terms)
        ctx.save_for_backward(grad_hidden, grad_w.to(weight.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None, None, None


def fused_causal_lm_loss(
    hidden_states, weight, labels, vocab_size, num_items_in_batch=None, shift_labels=None, chunk_size=None, **kwargs
):
    """transformers' ForCausalLMLoss (shifted inside, -100 ignored, mean, or sum / num_items_in_batch), no logits."""
    if shift_labels is None:  # position t predicts label t+1; the last position predicts nothing
        shift_labels = F.pad(labels, (0, 1), value=-100)[..., 1:]
    targets = shift_labels.reshape(-1).to(hidden_states.device)
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    # 512 rows keep a chunk's logits small while its matmuls stay efficient (measured on CPU, benchmarks/RESULTS.md).
    # At most 16 chunks, as torch.compile unrolls the loop: a 64 x 1024-token GPU micro-batch gets 4,096-row chunks
    # (bf16 logits and their gradient: 2 x 4,096 x 50,304 x 2 bytes = 0.8 GB at a time; not measured on a GPU).
    chunk_size = chunk_size or max(512, -(-hidden.shape[0] // 16))
    device_type = hidden.device.type
    autocast = torch.is_autocast_enabled(device_type)
    dtype = torch.get_autocast_dtype(device_type) if autocast else weight.dtype
    with torch.autocast(device_type, enabled=False):  # dtypes are explicit inside
        loss = LinearCrossEntropy.apply(hidden, weight, targets, vocab_size, chunk_size, dtype)
    return loss / (num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum())


class GPT2ReproForCausalLM(GPT2ReproPreTrainedModel, GenerationMixin):
    """GPT-2 language model. Logits cover the tokenizer's vocab_size ids only, never the padding rows."""

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: GPT2ReproConfig):
        super().__init__(config)
        self.transformer = GPT2ReproModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        # save_pretrained writes AutoConfig and AutoModelForCausalLM into auto_map; AutoModel is ours to add.
        config.auto_map = {**(getattr(config, "auto_map", None) or {}), "AutoModel": "modeling_gpt2repro.GPT2ReproModel"}
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        shift_labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Returns the loss given `labels` (Hugging Face semantics: labels = input_ids, shifted inside, -100
        ignored) or `shift_labels` (already aligned: position t predicts shift_labels[:, t]; the trainer's
        (T+1)-token windows use this so that every token is a target).

        A training step (train mode, grad enabled, labels given) returns `logits=None`: its loss comes straight
        from the hidden states through `fused_causal_lm_loss`, which never holds the (tokens x vocab) logits.
        Eval, generation and no-grad calls return logits as usual.
        """
        outputs = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        has_labels = labels is not None or shift_labels is not None
        if has_labels and self.training and torch.is_grad_enabled():
            loss = fused_causal_lm_loss(
                hidden_states, self.lm_head.weight, labels, self.config.vocab_size, shift_labels=shift_labels, **kwargs
            )
            return CausalLMOutputWithPast(loss=loss, logits=None, cache=outputs.cache)
        # Generation only needs the last position's logits.
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        # Only the tokenizer's rows: contiguous logits, and padding ids can never be predicted.
        logits = F.linear(hidden_states[:, keep, :], self.lm_head.weight[: self.config.vocab_size])
        loss = None
        if has_labels:
            shift_labels = shift_labels.contiguous() if shift_labels is not None else None  # a window slice is not
            loss = self.loss_function(
                logits=logits, labels=labels, shift_labels=shift_labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache)

    # ---- interop with OpenAI's GPT-2 as packaged by transformers (GPT2LMHeadModel) ----
    # GPT2LMHeadModel stores these as Conv1D: (in, out), the transpose of nn.Linear's (out, in).
    _CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

    @classmethod
    def from_gpt2(cls, gpt2="gpt2", **config_overrides) -> "GPT2ReproForCausalLM":
        """Our model with the weights of a `GPT2LMHeadModel`, a local directory of one, or a Hub id."""
        from transformers import GPT2LMHeadModel

        if not isinstance(gpt2, GPT2LMHeadModel):
            try:
                gpt2 = GPT2LMHeadModel.from_pretrained(gpt2)
            except OSError as e:
                raise OSError(
                    f"cannot load GPT-2 weights from {gpt2!r} (offline or not a GPT-2 checkpoint?): pass a local "
                    "directory holding a GPT2LMHeadModel checkpoint, or connect to the Hugging Face Hub"
                ) from e
        source = gpt2.config
        if source.activation_function not in ("gelu_new", "gelu_pytorch_tanh") or source.n_inner not in (
            None,
            4 * source.n_embd,
        ):
            raise ValueError("only standard GPT-2 checkpoints (tanh GELU, MLP width 4 * n_embd) can be converted")
        config = GPT2ReproConfig(
            vocab_size=source.vocab_size,
            n_positions=source.n_positions,
            n_embd=source.n_embd,
            n_layer=source.n_layer,
            n_head=source.n_head,
            layer_norm_epsilon=source.layer_norm_epsilon,
            initializer_range=source.initializer_range,
            **config_overrides,
        )
        model = cls(config)
        state = {}
        for name, tensor in gpt2.state_dict().items():
            if name.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers of old checkpoints
                continue
            if name.endswith(cls._CONV1D_WEIGHTS):
                tensor = tensor.t()
            if name == "transformer.wte.weight":  # padding rows: zero, never predicted nor embedded
                tensor = F.pad(tensor, (0, 0, 0, config.padded_vocab_size - config.vocab_size))
            state[name] = tensor
        state["lm_head.weight"] = state["transformer.wte.weight"]
        model.load_state_dict(state, strict=True)
        return model.to(gpt2.dtype)

    def to_gpt2(self):
        """A plain `transformers.GPT2LMHeadModel` (vocab_size rows, no padding) with these weights."""
        from transformers import GPT2Config, GPT2LMHeadModel

        c = self.config
        gpt2 = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=c.vocab_size,
                n_positions=c.n_positions,
                n_embd=c.n_embd,
                n_layer=c.n_layer,
                n_head=c.n_head,
                layer_norm_epsilon=c.layer_norm_epsilon,
                initializer_range=c.initializer_range,
                activation_function="gelu_new",
                resid_pdrop=c.resid_pdrop,
                embd_pdrop=c.embd_pdrop,
                attn_pdrop=c.attn_pdrop,
                bos_token_id=c.bos_token_id,
                eos_token_id=c.eos_token_id,
                tie_word_embeddings=True,
            )
        )
        state = {}
        for name, tensor in self.state_dict().items():
            if name == "lm_head.weight":
                continue
            if name.endswith(self._CONV1D_WEIGHTS):
                tensor = tensor.t()
            if name == "transformer.wte.weight":
                tensor = tensor[: c.vocab_size]
            state[name] = tensor.detach().clone().contiguous()
        missing, unexpected = gpt2.load_state_dict(state, strict=False)
        assert not unexpected and all(k == "lm_head.weight" or k.endswith(".attn.bias") for k in missing), missing
        gpt2.tie_weights()
        return gpt2.to(self.dtype)


# `save_pretrained` copies both .py files and writes auto_map, so checkpoints load anywhere with
# trust_remote_code=True; the registries make Auto* work inside this repo without it.
GPT2ReproConfig.register_for_auto_class()
GPT2ReproModel.register_for_auto_class("AutoModel")
GPT2ReproForCausalLM.register_for_auto_class("AutoModelForCausalLM")
AutoConfig.register("gpt2repro", GPT2ReproConfig, exist_ok=True)
AutoModel.register(GPT2ReproConfig, GPT2ReproModel, exist_ok=True)
AutoModelForCausalLM.register(GPT2ReproConfig, GPT2ReproForCausalLM, exist_ok=True)

__all__ = ["GPT2ReproPreTrainedModel", "GPT2ReproModel", "GPT2ReproForCausalLM"]
