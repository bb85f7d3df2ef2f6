"""Our checkpoints and transformers' own GPT-2, both ways.

Out: the native export, a gpt2repro checkpoint as a `GPT2LMHeadModel`, the form every GPT-2 client takes
(AutoModelForCausalLM and pipeline with no remote code in transformers 4.x and 5.x, the Hub's widget and Inference
Providers, vLLM, TGI, ONNX export, llama.cpp's GGUF converter). The folder holds what OpenAI's gpt2 repo holds:
model.safetensors (vocab_size rows, the padding dropped), config.json (model_type gpt2, with `n_ctx`),
generation_config.json and the GPT-2 tokenizer files. convert_gpt2.py to-gpt2 writes it; model_card.push_to_hub
uploads it to a repo's main branch.

In: the weights train.py --init-from starts from: OpenAI's GPT-2 by name (gpt2 ... gpt2-xl), any GPT2LMHeadModel
folder or Hub repo, or one of our checkpoints; the model's size is theirs.
"""

import json
import os
import shutil
from pathlib import Path

from gpt2repro.checkpoints import RunDir
from gpt2repro.errors import UserError, first_line
from gpt2repro.fileio import share_like, write_atomically
from gpt2repro.hub import hub_answers
from gpt2repro.tokenizer import save_tokenizer


# OpenAI's GPT-2 sizes on the Hub, by the names nanoGPT's init_from and the Hub's short ids use.
OPENAI_GPT2 = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
# The config fields that make a model's shape: a checkpoint's size is these.
SHAPE = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")


class ConversionError(UserError, ValueError):
    """A model that cannot be converted or loaded: the message says which and why."""


# where a gpt2repro checkpoint comes from, as the errors that ask for one say it
WRITTEN_BY_TRAIN = f"a folder that train.py wrote (RUN_DIR/{RunDir.FINAL} or a {RunDir.CHECKPOINT_PREFIX}* folder)"


def check_ours(folder: Path, error: type[UserError], what_to_do: str) -> None:
    """Refuse, with `error` and one line ending in `what_to_do`, a folder that is not a gpt2repro checkpoint."""
    try:
        model_type = json.loads((Path(folder) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise error(f"{folder}: no readable config.json ({type(e).__name__}); give {WRITTEN_BY_TRAIN}") from None
    if model_type != "gpt2repro":
        raise error(f"{folder} holds a {model_type!r} model, not a gpt2repro checkpoint; {what_to_do}")


def load_checkpoint_model(folder: str | Path):
    """Our model from a checkpoint folder (train.py's final/ or checkpoint-*, or convert_gpt2.py from-gpt2)."""
    from modeling_gpt2repro import GPT2ReproForCausalLM

    folder = Path(folder)
    check_ours(folder, ConversionError, "give a folder that train.py wrote (a GPT-2 folder converts the other way: "
               "convert_gpt2.py from-gpt2)")
    try:
        return GPT2ReproForCausalLM.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise ConversionError(f"{folder}: cannot load the checkpoint ({e})") from None


def check_output(out: str | Path, source: str | Path | None = None) -> None:
    """Refuse, before any weights load, an output folder that a conversion would overwrite: its own source, or a
    folder that already holds something (a checkpoint's config and weights replaced in place would no longer match
    its training_state's digests)."""
    out = Path(out)
    if source is not None and Path(source).exists() and out.exists() and out.resolve() == Path(source).resolve():
        raise ConversionError(f"OUT {out} is the source folder: converting in place would overwrite it; choose an "
                              "empty or new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        holds = "holds a model" if (out / "config.json").is_file() else "is not an empty folder"
        raise ConversionError(f"OUT {out} {holds}: a conversion never overwrites one; choose an empty or new folder")


def _write_folder(out: str | Path, write) -> None:
    """write(tmp) into a temp folder beside `out`, renamed to `out` once complete: an interrupted conversion leaves
    no half folder, and a failed one leaves nothing."""
    out = Path(out)
    check_output(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        os.replace(tmp, out)  # over an empty folder too
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_gpt2(model, out: str | Path):
    """Write `model` (a GPT2ReproForCausalLM, or a checkpoint folder of one) into `out` (new or empty) as a
    GPT2LMHeadModel with the GPT-2 tokenizer; returns the GPT2LMHeadModel."""
    if isinstance(model, (str, Path)):
        check_output(out, model)
        model = load_checkpoint_model(model)
    gpt2 = model.to_gpt2()

    def write(folder: Path) -> None:
        gpt2.save_pretrained(folder)
        # llama.cpp's GGUF converter reads n_ctx, as OpenAI's gpt2 config.json has it; transformers 5 no longer
        # writes it
        config = json.loads((folder / "config.json").read_text())
        config["n_ctx"] = gpt2.config.n_positions
        write_atomically(folder / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
        share_like(folder.glob("*.safetensors"), folder / "config.json")
        save_tokenizer(folder, gpt2.config.n_positions)

    _write_folder(out, write)
    return gpt2


def save_ours(model, out: str | Path) -> None:
    """Write our model (e.g. from GPT2ReproForCausalLM.from_gpt2) into `out` (new or empty) as a checkpoint folder
    with the GPT-2 tokenizer."""

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        share_like(folder.glob("*.safetensors"), folder / "config.json")
        save_tokenizer(folder, model.config.n_positions)

    _write_folder(out, write)


# ----------------------------------------------------------------------------------------------
# in: the weights a run starts from


def weights_source(name: str) -> str:
    """Where `name` (train.py --init-from) is: a local folder, or a Hub id (OpenAI's sizes by their short names)."""
    return name if Path(name).is_dir() else OPENAI_GPT2.get(name, name)


def base_model(name: str | None) -> dict | None:
    """What the report and the card say a run started from: {"name": as given, "hub_id": the Hub repo, or None for
    a local folder (the Hub's base_model metadata links only repos)}; None for a run from scratch."""
    if not name:
        return None
    source = weights_source(name)
    return {"name": name, "hub_id": None if Path(source).is_dir() else source}


def cache_only(source: str) -> bool:
    """Whether the Hub repo `source` is to be read from the local cache alone: the Hub does not answer its one short
    call (a refusal, no such repo or gated, is a ConversionError at once). False for a local folder."""
    if Path(source).is_dir():
        return False
    return not hub_answers(source, lambda why: ConversionError(f"cannot read the Hub repo {source}: {why}"))


def _read_config(source: str, local_only: bool | None = None) -> dict:
    """The config.json of a folder or Hub repo; `local_only`: cache_only(source), where the caller has asked it."""
    if Path(source).is_dir():
        path = Path(source) / "config.json"
        if not path.is_file():
            raise ConversionError(f"{source} holds no config.json: give a folder that save_pretrained wrote")
    else:
        from huggingface_hub import hf_hub_download

        local_only = cache_only(source) if local_only is None else local_only
        try:
            path = hf_hub_download(source, "config.json", local_files_only=local_only)
        except Exception as e:  # offline with no cached copy, no such repo, no permission
            raise ConversionError(f"cannot read the config.json of the Hub repo {source} "
                                  f"({first_line(e, with_type=True)}); online, check the id; offline (HF_HUB_OFFLINE=1), "
                                  "download it once online or give a local folder that holds the model") from None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConversionError(f"{source}: unreadable config.json ({first_line(e)})") from None


def pretrained_config(name: str):
    """The GPT2ReproConfig of the weights `name` names (config.json alone: seconds, before any weights load)."""
    from configuration_gpt2repro import GPT2ReproConfig

    from gpt2repro.tokenizer import VOCAB_SIZE

    source = weights_source(name)
    config = _read_config(source)
    if config.get("model_type") not in ("gpt2", "gpt2repro"):
        raise ConversionError(f"{source} holds a {config.get('model_type')!r} model; only GPT-2 (GPT2LMHeadModel) and "
                              "gpt2repro checkpoints can be trained on")
    if config.get("model_type") == "gpt2" and (config.get("activation_function", "gelu_new") not in
                                               ("gelu_new", "gelu_pytorch_tanh") or config.get("n_inner") is not None):
        raise ConversionError(f"{source}: only standard GPT-2 (tanh GELU, MLP width 4 x n_embd) can be trained on")
    if config.get("vocab_size", VOCAB_SIZE) != VOCAB_SIZE:
        raise ConversionError(f"{source} has a vocabulary of {config['vocab_size']:,} tokens, not GPT-2's "
                              f"{VOCAB_SIZE:,}: this project trains on GPT-2 token ids")
    return GPT2ReproConfig(**{key: config[key] for key in (*SHAPE, "layer_norm_epsilon") if key in config})


def load_pretrained(name: str):
    """Our model with the weights `name` names (see weights_source), in float32 (the weights train in fp32 whatever
    dtype they were saved in); the lm_head stays tied to wte."""
    from modeling_gpt2repro import GPT2ReproForCausalLM

    from transformers import GPT2LMHeadModel

    source = weights_source(name)
    local_only = cache_only(source)
    try:
        if _read_config(source, local_only).get("model_type") == "gpt2repro":
            model = GPT2ReproForCausalLM.from_pretrained(source, local_files_only=local_only)
        else:
            model = GPT2ReproForCausalLM.from_gpt2(GPT2LMHeadModel.from_pretrained(source, local_files_only=local_only))
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot load the weights of {source} ({first_line(e)})") from None
    return model.float()


__all__ = ["ConversionError", "OPENAI_GPT2", "base_model", "cache_only", "check_output", "check_ours", "export_gpt2",
           "load_checkpoint_model", "load_pretrained", "pretrained_config", "save_ours", "weights_source"]
