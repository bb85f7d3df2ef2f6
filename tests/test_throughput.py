import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from configuration_gpt2repro import GPT2ReproConfig
from modeling_gpt2repro import GPT2ReproForCausalLM
from gpt2repro import throughput
from gpt2repro.throughput import device_peak_flops, flops_per_token, mfu

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("preset", ["tiny", "gpt2"])
def test_flops_per_token_is_6n_plus_attention(preset):
    # N counted from the model itself: every parameter except the position table (a lookup) and the
    # lm_head's padding rows (never computed); the tied wte/lm_head once.
    config = GPT2ReproConfig.from_preset(preset)
    with torch.device("meta"):
        model = GPT2ReproForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())  # parameters() yields the tied matrix once
    n -= model.transformer.wpe.weight.numel() + (config.padded_vocab_size - config.vocab_size) * config.n_embd
    seq = 1024
    attention = 12 * config.n_layer * config.n_embd * seq
    assert flops_per_token(config, seq) == 6 * n + attention
    if preset == "gpt2":  # the figure nanoGPT and PaLM's appendix give for GPT-2 124M at T = 1024
        assert flops_per_token(config, seq) / 1e6 == pytest.approx(6 * 123.65 + 113.2, abs=1.0)


def test_mfu_and_cpu_peak():
    peak, source = device_peak_flops("cpu", torch.float32)
    assert peak > 1e9 and "measured float32 matmul probe on cpu" in source
    assert mfu(1000.0, 2e9, 4e12) == pytest.approx(0.5)


@pytest.mark.parametrize("device, flops, sized", [
    ("cpu", 2e11, [(512, 1), (1024, 1), (1024, 10)]),  # a small machine stops where one matmul takes 2 ms
    ("cpu", 1e14, [(512, 1), (1024, 1), (2048, 1), (4096, 10)]),  # a large server grows to the cap
    ("cuda", 1e14, [(8192, 10)]),  # a GPU gets its size at once
])
def test_the_peak_probe_grows_a_cpu_matmul_until_it_is_compute_bound_and_no_further(monkeypatch, device, flops, sized):
    calls = []

    def seconds(device, dtype, n, repeats=1):
        calls.append((n, repeats))
        return 2 * n**3 / flops

    monkeypatch.setattr(throughput, "_matmul_seconds", seconds)
    assert throughput._matmul_probe(torch.device(device), torch.float32) == pytest.approx(flops)
    assert calls == sized


def _small_pages_from_glibc():
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    always_huge = thp.exists() and "[always]" in thp.read_text()  # 2 MiB pages: 32 faults per 64 MiB, not 16,384
    return "CS_GNU_LIBC_VERSION" in getattr(os, "confstr_names", {}) and not always_huge and "LD_PRELOAD" not in os.environ


@pytest.mark.slow
@pytest.mark.skipif(not _small_pages_from_glibc(), reason="counts glibc malloc's 4 KiB page faults")
def test_freed_memory_is_reused_without_page_faults():
    # A training step's pattern in miniature: the same large buffers freed and allocated again. glibc's default
    # unmaps them and faults every 4 KiB page back in on each cycle; with keep_freed_memory_for_reuse the heap
    # settles (seen here within 3-6 cycles) and then reuses its memory.
    code = """
import resource, sys, torch
from gpt2repro.throughput import keep_freed_memory_for_reuse
applied = keep_freed_memory_for_reuse() if sys.argv[1] == "on" else False
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
per_cycle = []
for _ in range(16):
    before = faults()
    big, small = torch.ones(16 * 2**20), torch.ones(3 * 2**20)  # 64 and 12 MiB
    del big, small
    per_cycle.append(faults() - before)
print(applied, sum(per_cycle[10:]))
"""

    def steady_state_faults(mode):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's own tunables
        out = subprocess.run(
            [sys.executable, "-c", code, mode], cwd=REPO, env=env, capture_output=True, text=True, check=True
        )
        applied, faults = out.stdout.split()
        return applied == "True", int(faults)

    applied, faults_on = steady_state_faults("on")
    _, faults_off = steady_state_faults("off")
    assert applied
    assert faults_off > 6 * 12_000  # each cycle faults the 64 MiB buffer back in (16,384 pages, seen 16-19k)
    assert faults_on * 20 < faults_off


def test_compiles_as_one_graph_for_training_and_evaluation(tiny_config):
    # A graph break splits what torch.compile can fuse and falls back to Python between the pieces.
    model = GPT2ReproForCausalLM(tiny_config)
    ids = torch.randint(0, tiny_config.vocab_size, (2, 16))
    calls = {
        "train, labels": lambda: model.train()(ids, labels=ids),
        "train, shift_labels (train.py)": lambda: model.train()(ids, shift_labels=ids),
        "eval, logits": lambda: model.eval()(ids, use_cache=False),
    }
    for name, call in calls.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            explanation = torch._dynamo.explain(call)()
        assert explanation.graph_break_count == 0, f"{name}: {[b.reason for b in explanation.break_reasons]}"
        assert explanation.graph_count == 1, name
