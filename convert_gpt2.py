"""Convert between OpenAI's GPT-2 (transformers' GPT2LMHeadModel) and our checkpoint format.

    python convert_gpt2.py from-gpt2 gpt2 checkpoints/gpt2-as-repro    # Hub id or local dir -> ours
    python convert_gpt2.py to-gpt2 runs/tiny/final exported/gpt2-plain  # ours -> plain GPT2LMHeadModel

Both write a folder with safetensors weights and the GPT-2 tokenizer. The exported GPT-2 loads with
plain transformers (no remote code); ours loads with trust_remote_code=True.
"""

import argparse

from gpt2repro.errors import UserError, cli
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


if __name__ == "__main__":
    main()
