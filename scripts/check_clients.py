"""Run the published model in the tools its users have, and compare each with our model.

    python scripts/check_clients.py runs/tiny/final                      # transformers of this environment only
    python scripts/check_clients.py runs/tiny/final --work /tmp/clients \\
        --transformers-python /tmp/tf4/bin/python \\                     # another transformers (e.g. 4.57)
        --gguf-python /tmp/gguf-venv/bin/python --llama-cpp ~/llama.cpp \\  # convert_hf_to_gguf.py, GGUFReader, llama_cpp
        --onnx-python /tmp/onnx-venv/bin/python                          # optimum-onnx + onnxruntime

The checkpoint is exported as `convert_gpt2.py to-gpt2` does (WORK/export); our model's greedy continuation of a
fixed prompt, and its logits over prompt and continuation in one forward, are the reference. Each client runs the
prompt in one forward (logits compared), then decodes greedily with its own cache, one token at a time (tokens and
each step's logits compared: a small model's greedy text is often a run of newlines, its logits are not). Each
client runs in its own interpreter (the clients pin transformers versions of their own) with this file in --client
mode, and reports what it measured:
- transformers: AutoTokenizer (fast and slow) ids, AutoModelForCausalLM logits, generate, pipeline text;
  no trust_remote_code anywhere.
- gguf: llama.cpp's convert_hf_to_gguf.py on the export (f32, no edits), then gguf.GGUFReader: every tensor
  equal to the export's (c_attn/c_proj/c_fc transposed as the converter does), architecture, context length,
  tokenizer model, tokens, merges and special ids; with llama_cpp importable, its tokenization, logits and
  greedy tokens too.
- onnx: optimum's ONNX export of the folder, its onnxruntime logits and greedy tokens.
A client whose tools are missing is skipped and says which. Exit status 1 if any check failed.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the project's modules live at the repository root
from gpt2repro.errors import UsageError, cli  # noqa: E402  (standard library only: every client's interpreter has it)

PROMPT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak."
NEW_TOKENS = 16
TOLERANCE = 1e-3  # max |Δ logits| a client may differ from our model by (f32 weights in every client)


# ----------------------------------------------------------------------------------------------
# the reference: our model, in this project's environment


def write_reference(checkpoint: Path, work: Path) -> None:
    import numpy as np
    import torch

    from gpt2repro.export import export_gpt2, load_checkpoint_model
    from gpt2repro.tokenizer import EOT_ID, get_encoding

    model = load_checkpoint_model(checkpoint).float().eval()
    export_gpt2(model, work / "export")
    ids = get_encoding().encode(PROMPT)
    with torch.no_grad():
        tokens = list(ids)
        for _ in range(NEW_TOKENS):  # greedy, stopping at <|endoftext|> as generate() does
            tokens.append(int(model(torch.tensor([tokens])).logits[0, -1, : 50257].argmax()))
            if tokens[-1] == EOT_ID:
                break
        logits = model(torch.tensor([tokens])).logits[0, :, : 50257].numpy()
    np.savez(work / "reference.npz", ids=np.array(ids), logits=logits, greedy=np.array(tokens[len(ids):]),
             n_ctx=model.config.n_positions)


# ----------------------------------------------------------------------------------------------
# the clients, each in its own interpreter


def _compare(result: dict, name: str, logits, ref: dict, steps: bool = False) -> None:
    """max |Δ| against our logits: of the prompt, or (steps) of the greedy steps, each predicting the next token."""
    import numpy as np

    n, k = len(ref["ids"]), len(ref["greedy"])
    reference = ref["logits"][n - 1 : n - 1 + k] if steps else ref["logits"][:n]
    result[f"{name} max|Δlogits|"] = float(np.abs(np.asarray(logits, dtype=np.float64) - reference).max())


def client_transformers(export: Path, ref: dict) -> dict:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    result = {"versions": f"transformers {transformers.__version__}, torch {torch.__version__}"}
    fast = AutoTokenizer.from_pretrained(export)
    slow = AutoTokenizer.from_pretrained(export, use_fast=False)
    result["tokenizer classes"] = f"{type(fast).__name__}, {type(slow).__name__}"
    result["tokenizer ids equal"] = (fast(PROMPT).input_ids == ref["ids"].tolist() == slow(PROMPT).input_ids)
    result["model_max_length"] = fast.model_max_length
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    result["model class"] = type(model).__name__
    ids = torch.tensor([ref["ids"].tolist()])
    with torch.no_grad():
        _compare(result, "AutoModelForCausalLM", model(ids).logits[0], ref)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW_TOKENS,
                             pad_token_id=fast.eos_token_id, output_logits=True, return_dict_in_generate=True)
    result["generate greedy tokens equal"] = out.sequences[0, ids.shape[1]:].tolist() == ref["greedy"].tolist()
    _compare(result, "generate steps", torch.cat(out.logits), ref, steps=True)
    generator = pipeline("text-generation", model=str(export))
    text = generator(PROMPT, do_sample=False, max_new_tokens=NEW_TOKENS, return_full_text=False)[0]["generated_text"]
    result["pipeline text equal"] = text == fast.decode(ref["greedy"].tolist())
    return result


def client_gguf(export: Path, ref: dict, llama_cpp_dir: Path) -> dict:
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    converter = llama_cpp_dir / "convert_hf_to_gguf.py"
    out = export.parent / "model-f32.gguf"
    run = subprocess.run([sys.executable, str(converter), str(export), "--outtype", "f32", "--outfile", str(out)],
                         capture_output=True, text=True)
    result = {"versions": f"gguf {_version('gguf')}, transformers {_version('transformers')}",
              "convert_hf_to_gguf.py": "ok" if run.returncode == 0 else run.stderr.strip().splitlines()[-1]}
    if run.returncode != 0:
        return result

    reader = gguf.GGUFReader(out)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    config = json.loads((export / "config.json").read_text())
    vocab = json.loads((export / "vocab.json").read_text())
    merges = (export / "merges.txt").read_text().splitlines()[1:]
    result["metadata right"] = {
        "general.architecture": fields.get("general.architecture") == "gpt2",
        "gpt2.context_length": fields.get("gpt2.context_length") == config["n_ctx"] == ref["n_ctx"],
        "gpt2.block_count": fields.get("gpt2.block_count") == config["n_layer"],
        "tokenizer.ggml.model": fields.get("tokenizer.ggml.model") == "gpt2",
        "tokenizer.ggml.pre": fields.get("tokenizer.ggml.pre") == "gpt-2",
        "tokenizer.ggml.tokens": fields.get("tokenizer.ggml.tokens") == sorted(vocab, key=vocab.get),
        "tokenizer.ggml.merges": fields.get("tokenizer.ggml.merges") == merges,
        "special ids": (fields.get("tokenizer.ggml.bos_token_id"), fields.get("tokenizer.ggml.eos_token_id"))
                       == (config["bos_token_id"], config["eos_token_id"]),
    }
    result["metadata right"] = all(result["metadata right"].values()) or {
        key: ok for key, ok in result["metadata right"].items() if not ok}

    weights = load_file(export / "model.safetensors")
    names = {"token_embd": "wte", "position_embd": "wpe", "output_norm": "ln_f", "attn_norm": "ln_1",
             "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj", "ffn_norm": "ln_2", "ffn_up": "mlp.c_fc",
             "ffn_down": "mlp.c_proj"}
    worst, unmatched = 0.0, []
    for tensor in reader.tensors:
        parts = tensor.name.split(".")  # blk.N.attn_qkv.weight or token_embd.weight
        block = f"h.{parts[1]}." if parts[0] == "blk" else ""
        ours = weights.get(f"transformer.{block}{names.get(parts[-2], parts[-2])}.{parts[-1]}")
        data = np.asarray(tensor.data).reshape([int(n) for n in reversed(tensor.shape)])
        if ours is None:
            unmatched.append(tensor.name)
            continue
        ours = ours.T if ours.ndim == 2 and parts[-2] in ("attn_qkv", "attn_output", "ffn_up", "ffn_down") else ours
        worst = max(worst, float(np.abs(data - ours).max()) if data.shape == ours.shape else float("inf"))
    result["tensors"] = f"{len(reader.tensors)} of {len(weights)}, max|Δ| {worst}" + (
        f", not ours: {unmatched}" if unmatched else "")
    result["tensors equal"] = worst == 0.0 and not unmatched and len(reader.tensors) == len(weights)

    try:
        import llama_cpp
    except ImportError as e:
        result["llama_cpp"] = f"skipped ({e})"
        return result
    result["versions"] += f", llama_cpp {llama_cpp.__version__}"
    llm = llama_cpp.Llama(str(out), n_ctx=ref["n_ctx"], logits_all=True, verbose=False)
    ids = llm.tokenize(PROMPT.encode(), add_bos=False, special=False)
    result["llama_cpp tokenize equal"] = ids == ref["ids"].tolist()
    llm.eval(ref["ids"].tolist())
    _compare(result, "llama_cpp", llm.scores[: len(ref["ids"])], ref)
    greedy, steps = [], []
    for _ in range(len(ref["greedy"])):
        steps.append(np.array(llm.scores[llm.n_tokens - 1]))
        greedy.append(int(np.argmax(steps[-1])))
        llm.eval([greedy[-1]])
    result["llama_cpp greedy tokens equal"] = greedy == ref["greedy"].tolist()
    _compare(result, "llama_cpp steps", steps, ref, steps=True)
    return result


def client_onnx(export: Path, ref: dict) -> dict:
    import numpy as np
    import onnxruntime
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    result = {"versions": f"optimum-onnx {_version('optimum-onnx')}, onnxruntime {onnxruntime.__version__}, "
                          f"transformers {_version('transformers')}"}
    onnx_dir = export.parent / "onnx"
    main_export(str(export), output=onnx_dir, task="text-generation-with-past")
    model = ORTModelForCausalLM.from_pretrained(onnx_dir)
    tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    ids = np.array([ref["ids"].tolist()])
    inputs = tokenizer(PROMPT, return_tensors="pt")
    result["tokenizer ids equal"] = inputs.input_ids[0].tolist() == ref["ids"].tolist()
    _compare(result, "onnxruntime", model(**inputs).logits[0].detach().numpy(), ref)
    out = model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=tokenizer.eos_token_id,
                         output_logits=True, return_dict_in_generate=True)
    result["onnxruntime greedy tokens equal"] = out.sequences[0, ids.shape[1]:].tolist() == ref["greedy"].tolist()
    _compare(result, "onnxruntime steps", np.concatenate([step.detach().numpy() for step in out.logits]), ref,
             steps=True)
    return result


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "?"


def run_client(args) -> None:
    """--client mode: one client's checks, printed as the last line, JSON."""
    import numpy as np

    export = Path(args.work) / "export"
    ref = dict(np.load(Path(args.work) / "reference.npz"))
    ref["n_ctx"] = int(ref["n_ctx"])
    try:
        if args.client == "transformers":
            result = client_transformers(export, ref)
        elif args.client == "gguf":
            result = client_gguf(export, ref, Path(args.llama_cpp))
        else:
            result = client_onnx(export, ref)
    except ImportError as e:
        result = {"skipped": f"not installed in {sys.executable}: {e}"}
    print(json.dumps(result))


# ----------------------------------------------------------------------------------------------


def failures(result: dict) -> list[str]:
    failed = [key for key, value in result.items() if value is False or isinstance(value, dict)]
    failed += [key for key, value in result.items() if "max|Δlogits|" in key and not value <= TOLERANCE]
    if result.get("convert_hf_to_gguf.py", "ok") != "ok":
        failed.append("convert_hf_to_gguf.py")
    return failed


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", help="our checkpoint folder (RUN_DIR/final)")
    parser.add_argument("--work", default="client-check", help="where the export and the clients' files go")
    parser.add_argument("--transformers-python", action="append", default=[],
                        help="another interpreter to run the transformers checks in (repeatable)")
    parser.add_argument("--gguf-python", help="an interpreter with gguf, transformers and torch (llama_cpp optional)")
    parser.add_argument("--llama-cpp", help="a llama.cpp checkout (its convert_hf_to_gguf.py and conversion/)")
    parser.add_argument("--onnx-python", help="an interpreter with optimum-onnx and onnxruntime")
    parser.add_argument("--client", choices=("transformers", "gguf", "onnx"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        return run_client(args)
    if not args.checkpoint:
        parser.error("give our checkpoint folder")
    for flag, python in [*(("--transformers-python", p) for p in args.transformers_python),
                         ("--gguf-python", args.gguf_python), ("--onnx-python", args.onnx_python)]:
        if python and not Path(python).is_file():
            raise UsageError(f"{flag} {python}: no such interpreter; give the python of an environment with the tools")
    if args.llama_cpp and not (Path(args.llama_cpp) / "convert_hf_to_gguf.py").is_file():
        raise UsageError(f"--llama-cpp {args.llama_cpp}: no convert_hf_to_gguf.py there; give a llama.cpp checkout")

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    write_reference(Path(args.checkpoint), work)
    runs = [("transformers", python, []) for python in [sys.executable, *args.transformers_python]]
    runs.append(("gguf", args.gguf_python, ["--llama-cpp", args.llama_cpp or ""]))
    runs.append(("onnx", args.onnx_python, []))
    failed = False
    for client, python, extra in runs:
        if not python or (client == "gguf" and not args.llama_cpp):
            print(f"{client}: skipped (give --{client}-python{' and --llama-cpp' if client == 'gguf' else ''})")
            continue
        command = [python, __file__, "--client", client, "--work", str(work), *extra]
        run = subprocess.run(command, capture_output=True, text=True)
        lines = run.stdout.strip().splitlines()
        if run.returncode != 0 or not lines:
            result = {"error": (run.stderr.strip().splitlines() or ["no output"])[-1]}
        else:
            result = json.loads(lines[-1])
        bad = failures(result) + (["error"] if "error" in result else [])
        failed |= bool(bad)
        print(f"{client} ({python}): {'FAILED ' + ', '.join(bad) if bad else 'skipped' if 'skipped' in result else 'ok'}")
        for key, value in result.items():
            print(f"    {key}: {value}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
