"""Decisions only a GPU would reveal, observed on the CPU: the attention form that torch.compile captures (CUDA's
flash kernel takes only is_causal=True without a mask), the device reads of a training step and of validation, the
loader's pinned read-ahead, the launch environment of the GPU configs, bf16 by compute capability, FSDP2's
precision and evaluation share, NCCL's error handling, and the FlashAttention-3 fallback. benchmarks/gpu_check.py
measures the same things on a GPU.
"""

import os
import sys

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


# ---- host syncs: a training step reads nothing back from the device unless it logs ----

def test_training_reads_from_the_device_only_once_per_logging_step_and_logs_exact_values(
    data_dir, tmp_path, count_reads
):
    from conftest import SEQ, logged, run_in_process

    common = ["--data-dir", data_dir, "--max-steps", 8, "--micro-batch-size", 2, "--total-batch-tokens",
              4 * SEQ]  # 2 micro-steps per optimizer step
    run_in_process(*common, "--run-dir", tmp_path / "every3", "--log-every", 3)
    reads = dict(count_reads)
    count_reads.clear()
    for step in range(7):  # the 8th is the last: evaluation and the final save follow it
        logs = (step + 1) % 3 == 0
        assert len(reads.get(step, [])) == (1 if logs else 0), (step, reads.get(step))
    run_in_process(*common, "--run-dir", tmp_path / "every1", "--log-every", 1)
    losses1, losses3 = logged(tmp_path / "every1", "loss"), logged(tmp_path / "every3", "loss")
    assert losses3 == [losses1[2], losses1[5], losses1[7]]  # steps 3, 6, 8 exactly: nothing averaged or skipped
    norms1, norms3 = logged(tmp_path / "every1", "grad_norm"), logged(tmp_path / "every3", "grad_norm")
    assert norms3 == [norms1[2], norms1[5], norms1[7]]


# ---- the loader: pinned memory, the next batch prepared ahead, the order unchanged ----


def test_the_loader_copies_from_pinned_memory_and_prepares_the_next_batch_without_changing_the_order(
    data_dir, monkeypatch
):
    from gpt2repro.token_shards import ShardedTokenLoader

    def loader():
        return ShardedTokenLoader(data_dir, "train", batch_size=4, seq_len=32, rank=1, world_size=2)

    reference = loader()
    expected = [reference.next_batch() for _ in range(6)]
    pinned, copies = [], []
    # No CUDA here: pinning and the copy are recorded and leave the batch on the CPU, where it can be compared.
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self) or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *args, **kwargs: copies.append((args, kwargs)) or self)
    ahead = loader()
    first = ahead.next_batch("cuda:0")
    assert len(pinned) == 2 and copies == [(("cuda:0",), {"non_blocking": True})] * 2  # this batch and the next
    got = [first] + [ahead.next_batch("cuda:0") for _ in range(2)]
    resumed = loader()
    resumed.load_state_dict(ahead.state_dict())  # the batch read ahead is not counted as consumed
    got += [resumed.next_batch("cuda:0") for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


# ---- launch environment and precision choice ----


@pytest.mark.parametrize("config", ["1gpu", "8gpu", "fsdp", "multinode"])
def test_the_environment_accelerate_builds_from_a_gpu_config_keeps_the_users_visible_devices(config, monkeypatch):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env, prepare_simple_launcher_cmd_env
    from conftest import REPO

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # the user chose GPU 3, perhaps because 0 is busy
    config_file = REPO / "accelerate_configs" / f"{config}.yaml"
    args = launch_command_parser().parse_args(["--config_file", str(config_file), "x.py"])
    args, _, _ = _validate_launch_command(args)
    # accelerate launch's own choice of launcher: FSDP and multi-GPU runs go through the multi-GPU one
    env = prepare_multi_gpu_env(args) if args.multi_gpu or args.use_fsdp else prepare_simple_launcher_cmd_env(args)[1]
    assert env["CUDA_VISIBLE_DEVICES"] == "3"


@pytest.mark.parametrize("capability, expected", [((7, 0), "no"), ((7, 5), "no"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_gives_bf16_only_to_gpus_that_compute_it_natively(capability, expected, monkeypatch):
    from gpt2repro.launch import mixed_precision_for

    def is_bf16_supported(including_emulation=True):  # torch's answer: native from Ampere (8.0) on, else emulated
        return capability >= (8, 0) or including_emulation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert mixed_precision_for("auto") == expected
    assert mixed_precision_for("bf16") == "bf16"  # asked for explicitly, it is what the user gets


# ---- FSDP2 precision ----


def test_fsdp2_under_bf16_computes_in_bf16_but_reduces_gradients_and_returns_the_loss_in_fp32():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from gpt2repro.launch import set_fsdp_precision

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    plugin.set_mixed_precision("bf16")  # Accelerate's own: parameters, reduction and outputs all bf16
    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, mixed_precision="bf16",
                                  state=SimpleNamespace(fsdp_plugin=plugin))
    set_fsdp_precision(accelerator)
    policy = plugin.mixed_precision_policy
    assert (policy.param_dtype, policy.reduce_dtype, policy.output_dtype) == (torch.bfloat16, torch.float32, None)


@pytest.mark.slow
def test_fsdp2_with_bf16_logs_the_losses_of_ddp_with_bf16(data_dir, tmp_path):
    from conftest import SEQ, launcher, logged, run_cli

    runs = {}
    for config in ("cpu_2proc.yaml", "cpu_fsdp_2proc.yaml"):
        runs[config] = tmp_path / config
        result = run_cli("--data-dir", data_dir, "--run-dir", runs[config], "--max-steps", 8, "--total-batch-tokens",
                         8 * SEQ, "--micro-batch-size", 4, "--mixed-precision", "bf16", "--optimizer", "adamw",
                         launcher=launcher(config))  # AdamW: FSDP refuses Muon
        assert result.returncode == 0, result.stderr[-3000:]
    ddp, fsdp = runs["cpu_2proc.yaml"], runs["cpu_fsdp_2proc.yaml"]
    assert (fsdp / "final" / "training_state" / "pytorch_model_fsdp_0").is_dir()  # sharded: FSDP really ran
    assert len(logged(fsdp, "loss")) >= 6
    assert logged(fsdp, "loss") == pytest.approx(logged(ddp, "loss"), rel=1e-3)
    assert logged(fsdp, "val_loss") == pytest.approx(logged(ddp, "val_loss"), rel=1e-3)


# ---- validation and HellaSwag: no per-window sync, bf16 logits, an even share per rank ----


class DeviceReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Ops whose result size or value the host must read from the device: a sync each on a GPU."""

    SYNCING = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::is_nonzero"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = func is torch.ops.aten.index.Tensor and any(
            i is not None and i.dtype == torch.bool for i in args[1]
        )  # the selected count sizes the result: a nonzero inside
        self.count += func._schema.name in self.SYNCING or boolean_index
        return func(*args, **(kwargs or {}))


def test_validation_reads_from_the_device_a_fixed_number_of_times_whatever_the_number_of_windows(
    tiny_config, data_dir
):
    from gpt2repro.validation import validation_loss

    model = GPT2ReproForCausalLM(tiny_config).eval()
    counts = []
    for val_tokens in (128, 512, 1000):  # 2, 8 and 15 + a short window of 64 tokens
        with DeviceReads() as reads:
            validation_loss(model, data_dir, val_tokens, seq_len=64, batch_size=2)
        counts.append(reads.count)
    assert counts[0] == counts[1] == counts[2], counts


def test_validation_and_hellaswag_logits_stay_bf16_under_bf16(tiny_config, data_dir, bf16_accelerator):
    from conftest import REPO

    from gpt2repro.hellaswag import load_hellaswag, score_hellaswag
    from gpt2repro.tokenizer import load_tokenizer
    from gpt2repro.validation import validation_loss

    model = bf16_accelerator.prepare(GPT2ReproForCausalLM(tiny_config)).eval()
    dtypes = []
    model.register_forward_hook(lambda module, args, output: dtypes.append(output.logits.dtype))
    items = load_hellaswag(REPO / "tests" / "fixtures" / "hellaswag_tiny.jsonl", limit=2)
    with torch.no_grad(), bf16_accelerator.autocast():
        validation_loss(model, data_dir, 128, seq_len=64, accelerator=bf16_accelerator)
        score_hellaswag(model, load_tokenizer(), items, accelerator=bf16_accelerator)
    assert dtypes and set(dtypes) == {torch.bfloat16}, dtypes
    with torch.no_grad():  # the training path still gets Accelerate's wrapper back
        assert model(input_ids=torch.zeros(1, 4, dtype=torch.long)).logits.dtype == torch.float32


@pytest.mark.parametrize("windows, world", [(7, 2), (8, 2), (1, 4), (10, 3)])
def test_every_rank_gets_an_even_share_of_the_validation_windows_and_each_window_counts_once(windows, world):
    from gpt2repro.validation import rank_windows

    shares = [rank_windows(list(range(windows)), rank, world) for rank in range(world)]
    assert len({len(starts) for starts, _ in shares}) == 1  # as many forwards on every rank
    counted = sorted(start for starts, weights in shares for start, weight in zip(starts, weights) if weight)
    assert counted == list(range(windows))


EVALUATE = """
import json, sys
sys.path.insert(0, {repo!r})
import train
from modeling_gpt2repro import GPT2ReproModel
from gpt2repro.hellaswag import load_hellaswag
from gpt2repro.tokenizer import load_tokenizer

s = train.Settings(data_dir={data!r}, seq_len=32, mixed_precision="no", log_with="none", run_dir={out!r},
                   optimizer="adamw")  # FSDP's optimizer
accelerator = train.make_accelerator(s)  # FSDP2 over gloo when launched with the FSDP config
model = train.GPT2ReproForCausalLM(train.check_settings(s, accelerator.num_processes)[0])
model, _ = accelerator.prepare(model, train.make_optimizer(model, s))
forwards, forward = [0], GPT2ReproModel.forward
def counted(self, *args, **kwargs):
    forwards[0] += 1
    return forward(self, *args, **kwargs)
GPT2ReproModel.forward = counted
items = load_hellaswag({fixture!r}, limit=3)
results = train.evaluate(accelerator, accelerator.unwrap_model(model), load_tokenizer(), s, 520, items)
with open({out!r} + f"/rank{{accelerator.process_index}}-of-{{accelerator.num_processes}}.json", "w") as f:
    json.dump(dict(results, forwards=forwards[0]), f)
"""


@pytest.mark.slow
def test_fsdp_ranks_share_validation_and_hellaswag_evenly_and_get_one_processs_results(data_dir, tmp_path):
    import json
    import subprocess
    import sys

    from conftest import REPO, launcher

    # 520 targets are 16 windows of 32 and a short one, 3 HellaSwag items: the ranks' shares differ, and are padded
    script = tmp_path / "evaluate.py"
    script.write_text(EVALUATE.format(repo=str(REPO), data=str(data_dir), out=str(tmp_path),
                                      fixture=str(REPO / "tests/fixtures/hellaswag_tiny.jsonl")))
    for command in (launcher("cpu_fsdp_2proc.yaml"), [sys.executable]):
        result = subprocess.run([*command, str(script)], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    one, *ranks = (json.loads((tmp_path / name).read_text()) for name in
                   ("rank0-of-1.json", "rank0-of-2.json", "rank1-of-2.json"))
    assert ranks[0]["forwards"] == ranks[1]["forwards"] < one["forwards"]  # an even share each, not everything
    for results in ranks:
        assert results.pop("forwards") and results["hellaswag_items"] == 3
        assert results == pytest.approx({k: v for k, v in one.items() if k != "forwards"}, rel=1e-6)


# ---- NCCL: a lost rank raises in Python (the one-line message), not a watchdog abort ----


@pytest.mark.parametrize("users, expected", [(None, "2"), ("1", "1")])
def test_nccl_errors_raise_in_python_unless_the_user_chose_otherwise(users, expected, monkeypatch, tmp_path):
    from accelerate.state import AcceleratorState

    from gpt2repro.launch import make_accelerator
    from gpt2repro.settings import Settings

    if users is None:
        monkeypatch.delenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", raising=False)
    else:
        monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", users)
    AcceleratorState._reset_state(reset_partial_state=True)
    make_accelerator(Settings(run_dir=str(tmp_path), log_with="none"))  # before any process group
    AcceleratorState._reset_state(reset_partial_state=True)
    assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == expected


@pytest.mark.slow
@pytest.mark.parametrize("users, expected", [(None, False), ("1", True)])
def test_under_torchrun_the_agents_default_is_not_taken_for_the_users_choice(users, expected, tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    # torch elastic's agent gives every worker TORCH_NCCL_ASYNC_ERROR_HANDLING=1 when the user set nothing
    script = tmp_path / "worker.py"
    script.write_text("import os\nfrom gpt2repro.launch import nccl_error_handling_chosen\n"
                      "print('seen', os.environ['TORCH_NCCL_ASYNC_ERROR_HANDLING'], 'chosen', nccl_error_handling_chosen())\n")
    env = {k: v for k, v in os.environ.items() if k != "TORCH_NCCL_ASYNC_ERROR_HANDLING"}
    env["PYTHONPATH"] = str(REPO)
    if users is not None:
        env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = users
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                             str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert f"seen 1 chosen {expected}" in result.stdout, result.stdout + result.stderr


# ---- FlashAttention-3 through `kernels`: optional, with a clean fallback ----


@pytest.fixture(params=["as installed here", "with kernels installed"])
def without_kernels(request, tmp_path, monkeypatch):
    """`kernels` made absent, whether or not the environment has it: the README tells Hopper users to install it,
    and the suite must pass for them too. The second case plays such an environment with a stand-in distribution
    (at the version transformers asks for), so that a test which merely assumes the package absent fails here."""
    from transformers.utils import import_utils

    if request.param == "with kernels installed":
        (tmp_path / "kernels").mkdir()
        (tmp_path / "kernels" / "__init__.py").write_text("")
        (tmp_path / f"kernels-{import_utils.KERNELS_MIN_VERSION}.dist-info").mkdir()
        (tmp_path / f"kernels-{import_utils.KERNELS_MIN_VERSION}.dist-info" / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: kernels\nVersion: {import_utils.KERNELS_MIN_VERSION}\n")
        monkeypatch.syspath_prepend(tmp_path)
        import_utils.is_kernels_available.cache_clear()  # transformers remembers its first answer
        assert import_utils.is_kernels_available()
    monkeypatch.setitem(sys.modules, "kernels", None)  # unimportable, and importlib.util.find_spec finds nothing
    import_utils.is_kernels_available.cache_clear()
    yield
    import_utils.is_kernels_available.cache_clear()  # asked afresh once the environment is back


@pytest.mark.parametrize("capability, has_notice", [((8, 0), False), ((9, 0), True)])
def test_attention_auto_falls_back_to_sdpa_without_hopper_or_without_kernels(capability, has_notice, without_kernels,
                                                                            monkeypatch):
    from gpt2repro.attention import choose_attention

    assert choose_attention("auto", "cpu") == ("sdpa", None)
    assert choose_attention("eager", "cpu") == ("eager", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    attention, notice = choose_attention("auto", "cuda:0")
    assert attention == "sdpa" and bool(notice) == has_notice
    if notice:  # a Hopper GPU without `kernels`: the user learns why, in one line
        assert "FlashAttention-3 unavailable" in notice and "kernels" in notice and "\n" not in notice


def test_a_hopper_gpu_with_a_loadable_kernel_gets_flash_attention_3(monkeypatch):
    import transformers.integrations.hub_kernels as hub_kernels

    from gpt2repro.attention import FLASH_ATTENTION_3, choose_attention

    loaded = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(hub_kernels, "load_and_register_attn_kernel", loaded.append)
    assert choose_attention("auto", "cuda:0") == (FLASH_ATTENTION_3, None) and loaded == [FLASH_ATTENTION_3]


def test_the_model_takes_an_attention_implementation_through_transformers_attention_interface(tiny_config):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    calls = []

    def recording_attention(module, query, key, value, attention_mask, **kwargs):
        calls.append(module.layer_idx)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("gpt2repro-recording", recording_attention)  # as `kernels` registers FA3
    model = GPT2ReproForCausalLM(tiny_config).eval()
    input_ids = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        expected = model(input_ids=input_ids).logits
        model.set_attn_implementation("gpt2repro-recording")
        got = model(input_ids=input_ids).logits
    assert calls == list(range(tiny_config.n_layer)) and torch.equal(got, expected)
