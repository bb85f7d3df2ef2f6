"""benchmarks/gpu_check.py: its arguments, its sections (each run alone on the CPU), the peak table MFU divides by,
the report it appends, a CPU smoke run of everything."""

import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from gpt2repro import throughput
from gpt2repro.throughput import GPU_BF16_PEAK_TFLOPS, datasheet_bf16_peak

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402
import gpu_sections  # noqa: E402
from _common import compile_counts  # noqa: E402
from gpu_sections import attention, data  # noqa: E402

# ---- arguments ----


def test_defaults_follow_the_device():
    cuda = gpu_check.parse_args([])
    assert (cuda.device, cuda.compile, cuda.precision, cuda.isolate) == ("cuda", "inductor", "bf16", True)
    assert cuda.sections == gpu_check.SECTION_NAMES and not cuda.no_append
    cpu = gpu_check.parse_args(["--device", "cpu", "--sections", "train,data", "--batch-sizes", "2,4", "--no-append"])
    assert (cpu.compile, cpu.precision, cpu.isolate) == ("off", "fp32", False)
    assert cpu.sections == ("train", "data") and cpu.batch_sizes == (2, 4) and cpu.no_append


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sections", "parity,nope"], "unknown section nope; choose from parity,attention,train,data,eval,"),
        (["--batch-sizes", "16,x"], "expected comma-separated integers"),
        (["--peer-batch-sizes", "0"], "must be positive"),
        (["--compile", "fast"], "invalid choice: 'fast'"),
    ],
)
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


# ---- the peak MFU divides by ----


def test_peak_table_holds_dense_bf16_figures_and_known_names_map_right():
    # The sparsity figures are twice these (H100 SXM 1,979): dividing by them halves the reported MFU.
    assert max(tflops for _, tflops in GPU_BF16_PEAK_TFLOPS) == 989.0
    expected = {
        "NVIDIA H100 80GB HBM3": 989,  # SXM5
        "NVIDIA H100 PCIe": 756,
        "NVIDIA H100 NVL": 835,
        "NVIDIA H200": 989,
        "NVIDIA H200 NVL": 835,
        "NVIDIA A100-SXM4-80GB": 312,
        "NVIDIA A100 80GB PCIe": 312,
    }
    for name, tflops in expected.items():
        assert datasheet_bf16_peak(name) == tflops * 1e12, name


@pytest.mark.parametrize(
    "name", ["NVIDIA RTX A1000 Laptop GPU", "NVIDIA GH200 480GB", "NVIDIA H800", "NVIDIA L4", "NVIDIA GeForce RTX 4090"]
)
def test_a_gpu_not_in_the_table_gets_no_table_figure(name):
    # "A1000" contains "A100" and "GH200" contains "H200": a substring match gave them those peaks.
    assert datasheet_bf16_peak(name) is None


@pytest.mark.parametrize(
    "name, peak, source",
    [
        ("NVIDIA H100 80GB HBM3", 989e12, "table: NVIDIA H100 80GB HBM3 bf16 dense 989 TFLOP/s"),
        ("NVIDIA RTX A1000 Laptop GPU", 2.5e13, "measured bfloat16 matmul probe on NVIDIA RTX A1000 Laptop GPU (not"),
    ],
)
def test_an_unknown_gpu_is_measured_and_says_so(monkeypatch, name, peak, source):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(throughput, "_matmul_probe", lambda device, dtype: 2.5e13)
    found, where = throughput.device_peak_flops.__wrapped__("cuda")  # unwrapped: no cached answer from another GPU
    assert found == peak and where.startswith(source)


# ---- helpers the sections rely on ----


def test_compile_counts_see_graph_breaks_and_recompiles():
    def f(x):
        x = x + 1
        torch._dynamo.graph_break()
        return x * 2

    torch._dynamo.reset()
    fn = torch.compile(f, backend="eager", dynamic=False)
    start = compile_counts()
    fn(torch.ones(3))
    warm = compile_counts()
    fn(torch.ones(3))  # same shape: nothing new
    same = compile_counts()
    fn(torch.ones(5))  # a new shape: recompiled
    after = compile_counts()
    assert warm[0] - start[0] == 2 and warm[1] - start[1] >= 1  # a graph either side of the break
    assert same == warm and after[0] > same[0]
    torch._dynamo.reset()


def test_attention_kernel_names_are_sorted_into_flash_and_fallbacks():
    found = attention.attention_kernels(
        [
            "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>(Flash_fwd_params)",
            "void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<64>>",
            "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64_4x1x1_kernel0_0",
            "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64",
            "aten::_scaled_dot_product_attention_math",
            "fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel)",
        ]
    )
    assert [attention.short_kernel_name(n) for n in found["forward"]] == [
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64_4x1x1_kernel0_0",
        "pytorch_flash::flash_fwd_kernel",
    ]
    assert [attention.short_kernel_name(n) for n in found["backward"]] == [
        "pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel"
    ]
    assert found["math"] == ["aten::_scaled_dot_product_attention_math"] and len(found["efficient"]) == 1


def test_a_failing_section_is_reported_in_its_row_and_the_others_still_run(monkeypatch):
    def broken(args, profile, context):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")

    def working(args, profile, context):
        return [gpu_check.Row("data", "loader", "1.0 ms per step", status="ok")]

    monkeypatch.setattr(gpu_check, "prepare_process", lambda args: None)  # keep this process's allocator settings
    monkeypatch.setattr(gpu_check.SECTIONS["train"], "run", broken)
    monkeypatch.setattr(gpu_check.SECTIONS["data"], "run", working)
    rows = gpu_check.run_sections(gpu_check.parse_args(["--device", "cpu", "--sections", "train,data"]))
    assert [(r.section, r.status) for r in rows] == [("train", "error"), ("data", "ok")]
    assert rows[0].result == "RuntimeError: CUDA error: an illegal memory access was encountered"


# ---- the sections, each alone ----


def test_every_section_module_has_what_gpu_check_runs_it_by():
    assert gpu_check.SECTION_NAMES == ("parity", "attention", "train", "data", "eval", "shakespeare", "syncs", "fsdp",
                                       "muon")
    for name, module in gpu_sections.SECTIONS.items():
        assert module.NAME == name and module.SUMMARY.strip() and module.TIMEOUT > 0 and callable(module.run), name


def test_list_names_each_section_with_the_module_that_holds_it(capsys):
    assert gpu_check.main(["--list"]) == 0
    printed = capsys.readouterr().out
    for name, module in gpu_sections.SECTIONS.items():
        path = Path(module.__file__).relative_to(REPO)
        assert f"  {name} " in printed and f"({path})" in printed and (REPO / path).is_file()


def test_a_section_flag_is_parsed_from_the_module_that_owns_it():
    args = gpu_check.parse_args(["--device", "cpu", "--shakespeare-steps", "3", "--steps", "2"])
    assert (args.shakespeare_steps, args.steps, args.batch_sizes) == (3, 2, None)


def cpu_args(section):
    return gpu_check.parse_args(["--device", "cpu", "--sections", section, "--no-append"])


def test_the_loader_share_is_measured_against_the_step_time_section_train_left():
    rows = data.run(cpu_args("data"), gpu_sections.PROFILES["cpu"], {"train": dict(tok_s=1000.0, batch=2)})
    assert [r.status for r in rows] == ["ok", "n/a"]  # the windows agree; no goal off the GPU
    assert rows[0].result.endswith("shape (4, 65)")  # the CPU layout: 4 windows of 64 + 1 tokens
    assert "of the 0.51 s training step (ours at micro-batch 2)" in rows[1].compared  # 4 x 64 x 2 tokens at 1,000/s


@pytest.mark.parametrize(
    "name",
    [pytest.param(name, marks=[] if name in ("data", "syncs", "fsdp", "muon") else [pytest.mark.slow])  # seconds, or n/a
     for name in gpu_sections.SECTION_NAMES],
)
def test_each_section_runs_alone_on_cpu(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gpu_check, "prepare_process", lambda args: torch.manual_seed(0))  # this process's allocator
    out = tmp_path / "report.json"
    assert gpu_check.main(["--device", "cpu", "--sections", name, "--no-append", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows and {r["section"] for r in rows} == {name}
    assert {r["status"] for r in rows} <= {"ok", "n/a", "info"}, rows
    assert f"Command: `python benchmarks/gpu_check.py --device cpu --sections {name} " in capsys.readouterr().out


# ---- the report ----


def table_lines(text):
    return [line for line in text.splitlines() if line.startswith("|")]


def test_report_is_appended_to_results_as_a_dated_section_keeping_the_old_content(tmp_path):
    results = tmp_path / "RESULTS.md"
    original = (REPO / "benchmarks" / "RESULTS.md").read_text()
    results.write_text(original)
    rows = [
        gpu_check.Row("train", "ours, micro-batch 64", "520,000 tok/s | MFU 52.1%", goal="MFU >= 50%", status="met"),
        gpu_check.Row("parity", "fp32 logits", "max abs diff 2.0e-04", goal="< 1e-04", status="FAIL"),
    ]
    machine = dict(device="NVIDIA H100 80GB HBM3", driver="550.54.15", cuda="12.6", torch="2.13.0+cu126",
                   transformers="5.24.0", python="3.11.7", threads=16, commit="abc1234")
    when = datetime.datetime(2026, 11, 27, 9, 30, tzinfo=datetime.timezone.utc)
    gpu_check.append_results(results, gpu_check.report_markdown(rows, machine, when, "python benchmarks/gpu_check.py"))

    text = results.read_text()
    assert text.startswith(original.rstrip("\n") + "\n\n")
    added = text[len(original.rstrip("\n")) :]
    assert "\n## GPU acceptance (gpu_check.py), 2026-11-27 09:30 UTC\n" in added
    for fact in ("NVIDIA H100 80GB HBM3", "driver 550.54.15 (CUDA 12.6)", "torch 2.13.0+cu126", "commit abc1234"):
        assert fact in added
    table = table_lines(added)
    assert table[0] == "| section | check | result | compared with | goal | status |"
    assert table[1] == "| --- | --- | --- | --- | --- | --- |"
    assert len(table) == 4
    assert all(len(re.split(r"(?<!\\)\|", line)) == 8 for line in table)  # a "|" inside a cell is escaped
    assert table[2].endswith("| MFU >= 50% | met |") and table[3].endswith("| **FAIL** |")

    gpu_check.append_results(results, gpu_check.report_markdown(rows[:1], machine, when, "again"))
    assert results.read_text().startswith(text) and len(table_lines(results.read_text())) == len(table_lines(text)) + 3


@pytest.mark.slow
def test_cpu_smoke_run_exits_0_and_reports_every_section(tmp_path):
    results = REPO / "benchmarks" / "RESULTS.md"
    before = results.read_text()
    out = tmp_path / "report.json"
    script = REPO / "benchmarks" / "gpu_check.py"
    command = [sys.executable, str(script), "--device", "cpu", "--no-append", "--out", str(out)]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    assert [name for name in gpu_check.SECTION_NAMES if not any(r["section"] == name for r in rows)] == []
    assert {r["status"] for r in rows} <= {"ok", "n/a", "info"}  # every check passed; goals apply to the GPU only
    printed = table_lines(proc.stdout.split("## GPU acceptance")[-1])
    assert len(printed) == len(rows) + 2 and all(f"| {r['section']} | {r['check']} |" in proc.stdout for r in rows)
    assert results.read_text() == before  # --no-append


def test_the_muon_section_times_the_optimizer_step_apart_from_the_accumulated_forward_and_backward(monkeypatch):
    from _common import random_tokens

    from gpt2repro.optim import make_optimizer
    from gpu_sections import muon

    model = muon.GPT2ReproForCausalLM(muon.model_config(gpu_sections.PROFILES["cpu"]))
    optimizer = make_optimizer(model, muon.settings("muon"))
    before = model.transformer.h[0].mlp.c_fc.weight.clone()
    events, windows = [], []  # what ran inside each timed window
    forward, step, timed = model.forward, optimizer.step, muon.timed
    monkeypatch.setattr(model, "forward", lambda *a, **k: events.append("forward") or forward(*a, **k))
    monkeypatch.setattr(optimizer, "step", lambda *a, **k: events.append("step") or step(*a, **k))

    def recorded(fn, device):
        start = len(events)
        result = timed(fn, device=device)
        windows.append(events[start:])
        return result

    monkeypatch.setattr(muon, "timed", recorded)
    batches = [random_tokens(2, 17, "cpu")] * 2  # one optimizer step of 2 accumulated micro-batches
    measured = muon.step_share(model, optimizer, batches, cpu_args("muon"), 1, 2)
    assert windows == [["forward", "forward"], ["step"]] * 3  # 1 warm-up and 2 timed steps, each part apart
    assert measured["forward_backward_s"] > 0 and measured["optimizer_s"] > 0 and 0 < measured["share"] < 1
    assert float(optimizer.found_inf) == 0  # timed as train.py steps it: with the non-finite gate, which let it step
    assert not torch.equal(model.transformer.h[0].mlp.c_fc.weight, before)
    assert muon.settings("muon").total_batch_tokens // muon.GPUS_OF_THE_RECIPE == 4 * 16 * 1024  # 4 micro-steps
