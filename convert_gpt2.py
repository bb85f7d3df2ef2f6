"""Convert between OpenAI's GPT-2 (transformers' GPT2LMHeadModel) and our checkpoint format, and publish a checkpoint.

    python convert_gpt2.py from-gpt2 gpt2 checkpoints/gpt2-as-repro    # Hub id or local dir -> ours
    python convert_gpt2.py to-gpt2 runs/tiny/final exported/gpt2-plain  # ours -> plain GPT2LMHeadModel
    python convert_gpt2.py push runs/gpt2-124m/final you/gpt2-124m-repro  # ours -> the Hub, as train.py --push-to-hub

Both conversions write a folder with safetensors weights and the GPT-2 tokenizer. The exported GPT-2 loads with
plain transformers (no remote code, 4.x and 5.x); ours loads with trust_remote_code=True. `push` puts the exported
GPT-2 on the repo's main branch and our checkpoint on its `gpt2repro` branch (--hub-format picks one of them).
"""

import argparse
from pathlib import Path

from gpt2repro.checkpoints import RunDir
from gpt2repro.errors import cli
from gpt2repro.export import ConversionError, cache_only, check_output, export_gpt2, save_ours
from gpt2repro.hub import HUB_FORMATS, check_repo_id, repo_id_problem
from gpt2repro.model_card import push_to_hub


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="direction", required=True)
    from_gpt2 = commands.add_parser("from-gpt2", help="a GPT2LMHeadModel (Hub id or directory) -> our checkpoint")
    from_gpt2.add_argument("source", help="GPT-2 Hub id (gpt2, gpt2-medium, ...) or directory")
    from_gpt2.add_argument("out", help="output directory")
    ours = f"our checkpoint directory (RUN_DIR/{RunDir.FINAL} or a {RunDir.CHECKPOINT_PREFIX}* folder)"
    to_gpt2 = commands.add_parser("to-gpt2", help="our checkpoint -> a plain GPT2LMHeadModel folder")
    to_gpt2.add_argument("source", help=ours)
    to_gpt2.add_argument("out", help="output directory")
    push = commands.add_parser("push", help="upload our checkpoint folder to the Hub (native GPT-2 on main)")
    push.add_argument("source", help=ours)
    push.add_argument("repo", help="the Hub model repo, e.g. you/gpt2-124m-repro")
    push.add_argument("--hub-format", choices=HUB_FORMATS, default="both",
                      help="both: native GPT-2 on main, our checkpoint on the gpt2repro branch; native or gpt2repro: "
                           "only that one, on main (default: both)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    args = parser.parse_args(argv)

    if args.direction == "push":
        check_repo_id(args.repo, "push REPO", ConversionError)
        print(f"pushed to {push_to_hub(args.source, args.repo, private=args.private, hub_format=args.hub_format)}")
        return
    check_output(args.out, args.source)
    local_only = check_direction(args.direction, args.source)
    if args.direction == "from-gpt2":
        from transformers import GPT2LMHeadModel

        from modeling_gpt2repro import GPT2ReproForCausalLM

        try:
            gpt2 = GPT2LMHeadModel.from_pretrained(args.source, local_files_only=True) if local_only else args.source
            model = GPT2ReproForCausalLM.from_gpt2(gpt2)
        except (OSError, ValueError) as e:
            raise ConversionError(str(e)) from None
        save_ours(model, args.out)
    else:
        model = export_gpt2(args.source, args.out)
    print(f"wrote {type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters) to {args.out}")


def check_direction(direction: str, source: str) -> bool:
    """Refuse, in one line, a source that is neither a directory nor a Hub repo id, and one that is already what the
    direction makes (loading it would end in a report of mismatched weights): our checkpoint given to from-gpt2,
    GPT-2's given to to-gpt2. Returns whether a Hub source is to be read from the local cache alone (export.cache_only:
    the Hub does not answer)."""
    from transformers import PretrainedConfig

    from configuration_gpt2repro import GPT2ReproConfig

    if not Path(source).exists() and (problem := repo_id_problem(source)):
        raise ConversionError(f"{source}: no such directory, and not a Hub repo id ({problem})")
    local_only = cache_only(source)
    try:
        kind = PretrainedConfig.get_config_dict(source, local_files_only=local_only)[0].get("model_type")
    except (OSError, ValueError):
        return local_only  # no config to read: loading it names the problem
    if direction == "from-gpt2" and kind == GPT2ReproConfig.model_type:
        raise ConversionError(f"{source} is already a gpt2repro checkpoint; to make a plain GPT-2 of it, use "
                              f"python convert_gpt2.py to-gpt2 {source} OUT")
    if direction == "to-gpt2" and kind == "gpt2":
        raise ConversionError(f"{source} is already a GPT-2 checkpoint; to make a gpt2repro one of it, use "
                              f"python convert_gpt2.py from-gpt2 {source} OUT")
    return local_only


if __name__ == "__main__":
    main()
