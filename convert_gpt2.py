"""Convert between OpenAI's GPT-2 (transformers' GPT2LMHeadModel) and our checkpoint format.

    python convert_gpt2.py from-gpt2 gpt2 checkpoints/gpt2-as-repro    # Hub id or local dir -> ours
    python convert_gpt2.py to-gpt2 runs/tiny/final exported/gpt2-plain  # ours -> plain GPT2LMHeadModel

Both write a folder with safetensors weights and the GPT-2 tokenizer. The exported GPT-2 loads with
plain transformers (no remote code); ours loads with trust_remote_code=True.
"""

import argparse
from pathlib import Path

from transformers import PretrainedConfig

from configuration_gpt2repro import GPT2ReproConfig
from gpt2repro.errors import UserError, cli
from gpt2repro.hub import repo_id_problem
from gpt2repro.tokenizer import load_tokenizer
from modeling_gpt2repro import GPT2ReproForCausalLM


class ConversionError(UserError, ValueError):
    """A model that cannot be converted: the message says which and why."""


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("direction", choices=["from-gpt2", "to-gpt2"])
    parser.add_argument("source", help="GPT-2 Hub id or directory (from-gpt2), or our checkpoint directory (to-gpt2)")
    parser.add_argument("out", help="output directory")
    args = parser.parse_args(argv)

    check_direction(args.direction, args.source)
    try:
        if args.direction == "from-gpt2":
            model = GPT2ReproForCausalLM.from_gpt2(args.source)
        else:
            model = GPT2ReproForCausalLM.from_pretrained(args.source).to_gpt2()
    except (OSError, ValueError) as e:
        raise ConversionError(str(e)) from None
    model.save_pretrained(args.out)
    load_tokenizer().save_pretrained(args.out)
    print(f"wrote {type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters) to {args.out}")


def check_direction(direction: str, source: str) -> None:
    """Refuse, in one line, a source that is neither a directory nor a Hub repo id, and one that is already what the
    direction makes (loading it would end in a report of mismatched weights): our checkpoint given to from-gpt2,
    GPT-2's given to to-gpt2."""
    if not Path(source).exists() and (problem := repo_id_problem(source)):
        raise ConversionError(f"{source}: no such directory, and not a Hub repo id ({problem})")
    try:
        kind = PretrainedConfig.get_config_dict(source)[0].get("model_type")
    except (OSError, ValueError):
        return  # no config to read: loading it names the problem
    if direction == "from-gpt2" and kind == GPT2ReproConfig.model_type:
        raise ConversionError(f"{source} is already a gpt2repro checkpoint; to make a plain GPT-2 of it, use "
                              f"python convert_gpt2.py to-gpt2 {source} OUT")
    if direction == "to-gpt2" and kind == "gpt2":
        raise ConversionError(f"{source} is already a GPT-2 checkpoint; to make a gpt2repro one of it, use "
                              f"python convert_gpt2.py from-gpt2 {source} OUT")


if __name__ == "__main__":
    main()
