"""The native export: a gpt2repro checkpoint as transformers' own `GPT2LMHeadModel`, the form every GPT-2 client
takes (AutoModelForCausalLM and pipeline with no remote code in transformers 4.x and 5.x, the Hub's widget and
Inference Providers, vLLM, TGI, ONNX export, llama.cpp's GGUF converter).

The folder holds what OpenAI's gpt2 repo holds: model.safetensors (vocab_size rows, the padding dropped),
config.json (model_type gpt2, with `n_ctx`), generation_config.json and the GPT-2 tokenizer files.
convert_gpt2.py to-gpt2 writes it; model_card.push_to_hub uploads it to a repo's main branch.
"""

import json
from pathlib import Path

from gpt2repro.checkpoints import RunDir
from gpt2repro.errors import UserError
from gpt2repro.fileio import write_atomically
from gpt2repro.tokenizer import save_tokenizer


class ConversionError(UserError, ValueError):
    """A model that cannot be converted: the message says which and why."""


def load_checkpoint_model(folder: str | Path):
    """Our model from a checkpoint folder (train.py's final/ or checkpoint-*, or convert_gpt2.py from-gpt2)."""
    from modeling_gpt2repro import GPT2ReproForCausalLM

    folder = Path(folder)
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise ConversionError(f"{folder}: no readable config.json ({type(e).__name__}); give a checkpoint folder "
                              f"that train.py wrote (RUN_DIR/{RunDir.FINAL} or a {RunDir.CHECKPOINT_PREFIX}* folder)"
                              ) from None
    if model_type != "gpt2repro":
        raise ConversionError(f"{folder} holds a {model_type!r} model, not a gpt2repro checkpoint; give a folder that "
                              "train.py wrote (a GPT-2 folder converts the other way: convert_gpt2.py from-gpt2)")
    try:
        return GPT2ReproForCausalLM.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise ConversionError(f"{folder}: cannot load the checkpoint ({e})") from None


def export_gpt2(model, out: str | Path):
    """Write `model` (a GPT2ReproForCausalLM, or a checkpoint folder of one) into `out` as a GPT2LMHeadModel with
    the GPT-2 tokenizer; returns the GPT2LMHeadModel."""
    if isinstance(model, (str, Path)):
        model = load_checkpoint_model(model)
    gpt2 = model.to_gpt2()
    out = Path(out)
    gpt2.save_pretrained(out)
    # llama.cpp's GGUF converter reads n_ctx, as OpenAI's gpt2 config.json has it; transformers 5 no longer writes it
    config = json.loads((out / "config.json").read_text())
    config["n_ctx"] = gpt2.config.n_positions
    write_atomically(out / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_tokenizer(out, gpt2.config.n_positions)
    return gpt2


def save_ours(model, out: str | Path) -> None:
    """Write our model (e.g. from GPT2ReproForCausalLM.from_gpt2) as a checkpoint folder with the GPT-2 tokenizer."""
    model.save_pretrained(out)
    save_tokenizer(out, model.config.n_positions)


__all__ = ["ConversionError", "export_gpt2", "load_checkpoint_model", "save_ours"]
