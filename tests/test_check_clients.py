"""scripts/check_clients.py: the published model checked in its users' tools; what is not installed is skipped."""

import importlib.util
import subprocess
import sys

import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location("check_clients", REPO / "scripts" / "check_clients.py")
check_clients = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_clients)


def test_a_client_fails_on_a_false_check_a_logit_gap_over_the_tolerance_or_a_failed_conversion():
    assert check_clients.failures({"versions": "x", "tokenizer ids equal": True, "onnxruntime max|Δlogits|": 1e-6,
                                   "convert_hf_to_gguf.py": "ok"}) == []
    assert check_clients.failures({"generate greedy tokens equal": False}) == ["generate greedy tokens equal"]
    assert check_clients.failures({"llama_cpp max|Δlogits|": 2e-3}) == ["llama_cpp max|Δlogits|"]
    assert check_clients.failures({"llama_cpp max|Δlogits|": float("nan")}) == ["llama_cpp max|Δlogits|"]
    assert check_clients.failures({"metadata right": {"gpt2.context_length": False}}) == ["metadata right"]
    assert check_clients.failures({"convert_hf_to_gguf.py": "KeyError: 'n_ctx'"}) == ["convert_hf_to_gguf.py"]


def test_an_interpreter_that_does_not_exist_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        check_clients.main([str(tmp_path), "--onnx-python", str(tmp_path / "nope" / "python")])
    assert str(exit.value).startswith("error: --onnx-python") and "no such interpreter" in str(exit.value)


@pytest.mark.slow
def test_with_no_optional_tools_it_checks_this_transformers_and_says_what_it_skipped(tiny_config, tmp_path):
    from modeling_gpt2repro import GPT2ReproForCausalLM

    from gpt2repro.export import save_ours

    save_ours(GPT2ReproForCausalLM(tiny_config), tmp_path / "ours")
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "check_clients.py"), str(tmp_path / "ours"),
                          "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"transformers ({sys.executable}): ok" in run.stdout
    assert "pipeline text equal: True" in run.stdout and "tokenizer ids equal: True" in run.stdout
    assert "gguf: skipped" in run.stdout and "onnx: skipped" in run.stdout
    assert (tmp_path / "work" / "export" / "config.json").is_file()
