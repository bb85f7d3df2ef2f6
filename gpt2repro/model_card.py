"""The model card and the upload: what a user of a trained checkpoint finds on the Hub.

The card is built with huggingface_hub's ModelCard / ModelCardData / EvalResult, so the Hub renders its
model-index (HellaSwag acc_norm in both conventions, validation loss and bits per byte) and ModelCard.load
reads it back. Its body holds the results next to OpenAI's GPT-2 (124M), the curves, the command that
reproduces the run and the hardware, time and cost from the run report (report.py).

push_to_hub uploads exactly what a user of the model needs, never training_state/ (optimizer, RNG): by default
transformers' own GPT2LMHeadModel (export.py) on the repo's main branch, which every GPT-2 client loads with no remote
code, and our checkpoint (its model code, the padded vocabulary) on the `gpt2repro` branch, for training on with this
project. The card on main shows both, the remote-code example pinned to the branch's commit.
"""

import dataclasses
import fnmatch
import json
import tempfile
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, EvalResult, HfApi, ModelCard, ModelCardData

from gpt2repro.checkpoints import RunDir
from gpt2repro.errors import UserError, first_line
from gpt2repro.export import WRITTEN_BY_TRAIN, check_ours, export_gpt2
from gpt2repro.hellaswag import HELLASWAG_ITEMS, HELLASWAG_METRICS
from gpt2repro.hub import HUB_FORMATS, check_repo_id
from gpt2repro.report import (
    GPT2_124M_REFERENCE,
    SAMPLE_PROMPT,
    base_model_text,
    hardware_lines,
    markdown_table,
    reproduce_command,
    results_rows,
    training_lines,
    val_loss_note,
)
from gpt2repro.fileio import write_files

# What a checkpoint folder holds for its users: save_pretrained's weights, config and remote code, the
# tokenizer, the card and the run's report. Top-level files only: training_state/ never matches.
UPLOAD_PATTERNS = (
    "config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
    "model.safetensors.index.json", "*.py", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.json", "merges.txt", "README.md", RunDir.CURVES, RunDir.REPORT_MD, RunDir.REPORT_JSON,
)
FROM_SCRATCH_TAG = "pretrained-from-scratch"
TAGS = ["gpt2", "gpt2repro", "causal-lm", FROM_SCRATCH_TAG]
GPT2REPRO_BRANCH = "gpt2repro"
# Files a push replaces wholesale: those of an earlier push that this one does not write are deleted (the model code
# of a gpt2repro push left on a main branch that now holds the native model, the shards of another size).
REPLACED_PATTERNS = ("*.py", "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
HELLASWAG_HUB_ID = "Rowan/hellaswag"
CONVENTION_STYLES = {"completion": "completion style (build-nanogpt, llm.c)", "lm_eval": "lm-evaluation-harness style"}
# Markers around the section eval_hellaswag.py --push-results maintains, so a second push replaces it.
EVAL_SECTION = ("<!-- gpt2repro:eval_hellaswag -->", "<!-- /gpt2repro:eval_hellaswag -->")


class PublishError(UserError, RuntimeError):
    """An upload or card download that failed: the message says what is intact and how to retry."""


# ----------------------------------------------------------------------------------------------
# model-index entries


def hellaswag_file(source: str | None, items: int | None) -> str | None:
    """The name of the local HellaSwag file scores came from, or None where they are of HellaSwag's validation set
    itself (downloaded with `auto`, or a local copy holding all of it). `source`: the --hellaswag setting or
    eval_hellaswag's --data."""
    if source in (None, "", "auto", "off") or items == GPT2_124M_REFERENCE[HELLASWAG_ITEMS]:
        return None
    return Path(source).name


def eval_results(scores: dict, data: dict | None, hellaswag_source: str | None = None) -> list[EvalResult]:
    """model-index entries from scores named as in a run report's final_eval (HELLASWAG_ITEMS, the acc_norm of
    HELLASWAG_METRICS, val_loss, val_bpb, val_tokens); `data` is report.describe_data() of the validation data;
    `hellaswag_source` is where the HellaSwag items came from (hellaswag_file). Accuracies in percent, as the
    published figures."""
    results = []
    items = scores.get(HELLASWAG_ITEMS)
    # a subset of HellaSwag is a different evaluation from the whole set: its own model-index entry
    split = "validation" if items in (None, GPT2_124M_REFERENCE[HELLASWAG_ITEMS]) else f"validation[:{items}]"
    local = hellaswag_file(hellaswag_source, items)
    dataset = dict(dataset_type=HELLASWAG_HUB_ID, dataset_name="HellaSwag", dataset_split=split)
    if local:  # not Rowan/hellaswag as published: say which file, and how many items
        dataset = dict(dataset_type=local, dataset_name=f"HellaSwag items of the local file {local}",
                       dataset_split=f"{items} items")
    for metric in HELLASWAG_METRICS:
        value = scores.get(metric.name)
        if metric.kind == "acc_norm" and value is not None:
            results.append(EvalResult(
                task_type="text-generation", task_name="Text Generation", **dataset, metric_type=metric.kind,
                metric_name=f"{metric.kind}, {CONVENTION_STYLES[metric.convention]}", metric_config=metric.convention,
                metric_value=round(100 * value, 2),
            ))
    if data and scores.get("val_loss") is not None:
        where = dict(
            task_type="text-generation", task_name="Text Generation",
            dataset_type=data.get("hub_dataset") or data.get("name") or "unknown",
            dataset_name=f"{data.get('name')} (gpt2repro validation shard)", dataset_config=data.get("hub_config"),
            dataset_split=f"val, first {scores['val_tokens']:,} tokens" if scores.get("val_tokens") else "val",
        )
        results.append(EvalResult(**where, metric_type="loss", metric_name="validation loss (nats per token)",
                                  metric_value=round(scores["val_loss"], 4)))
        if scores.get("val_bpb") is not None:
            results.append(EvalResult(**where, metric_type="bits_per_byte", metric_name="validation bits per byte",
                                      metric_value=round(scores["val_bpb"], 4)))
    return results


def _key(result: EvalResult) -> tuple:
    return (*result.unique_identifier, result.metric_type, result.metric_config)


def merge_eval_results(existing: list[EvalResult] | None, new: list[EvalResult]) -> list[EvalResult]:
    """`existing` with each entry `new` measures again replaced in place, the others appended."""
    replacements = {_key(r): r for r in new}
    merged = [replacements.pop(_key(r), r) for r in existing or []]
    return merged + [r for r in new if _key(r) in replacements]


# ----------------------------------------------------------------------------------------------
# the card


# Where the card of a run that was not pushed says the model is: a placeholder the uploader replaces, never a
# path of the training machine (which `hf upload` would publish).
PLACEHOLDER_REPO = "YOUR-NAME/YOUR-MODEL"
# Below this validation loss (nats/token) a GPT-2-sized model writes fluent text; above it, it does not.
FLUENT_VAL_LOSS = 4.0


@dataclasses.dataclass(frozen=True)
class HubLayout:
    """Where a push puts each format in the repo: `native` on main (or not pushed), our checkpoint at the revision
    `gpt2repro` (None: not pushed; "main"; a commit of GPT2REPRO_BRANCH)."""

    native: bool = True
    gpt2repro: str | None = GPT2REPRO_BRANCH


def build_model_card(report: dict, repo_id: str | None = None, layout: HubLayout | None = None) -> ModelCard:
    """The card of a checkpoint trained by train.py. `repo_id`: the Hub repo it is pushed to, or None for a card
    that is not pushed (its example then loads a placeholder id or the local folder). `layout`: what the push puts
    where; None for the card of a checkpoint folder (our format, loaded with remote code)."""
    data, settings, base = report.get("data") or {}, report.get("settings") or {}, report.get("base_model") or {}
    card_data = ModelCardData(
        language="en", license="mit", library_name="transformers", pipeline_tag="text-generation",
        tags=TAGS if not base else [tag for tag in TAGS if tag != FROM_SCRATCH_TAG],
        base_model=base.get("hub_id"),  # the Hub links a model to the one it was trained from
        datasets=[data["hub_dataset"]] if data.get("hub_dataset") else None,
        model_name=repo_id or f"gpt2repro-{settings.get('model', 'gpt2')}",
        eval_results=eval_results(report.get("final_eval") or {}, data, settings.get("hellaswag")) or None,
    )
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{card_body(report, repo_id, layout)}")


def use_lines(repo_id: str | None, layout: HubLayout | None) -> list[str]:
    """The card's Use section: how to load what the repo (or the folder) holds."""
    name = repo_id or PLACEHOLDER_REPO
    example = [
        f"ids = tokenizer({SAMPLE_PROMPT!r}, return_tensors=\"pt\")",
        "print(tokenizer.decode(model.generate(**ids, max_new_tokens=30, do_sample=True, top_k=50)[0]))",
    ]
    remote_code = ("`trust_remote_code=True` runs the model code shipped beside the weights (`modeling_gpt2repro.py`, "
                   "`configuration_gpt2repro.py`); read it first.")
    if layout is None or not layout.native:  # our format: in a local folder, on main, or on its branch
        on_branch = f', revision="{layout.gpt2repro}"' if layout and layout.gpt2repro not in (None, "main") else ""
        return [
            "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            *([] if repo_id else ["# the Hub repo this folder was uploaded to, or the path of this folder on your disk"]),
            f'name = "{name}"',
            f"model = AutoModelForCausalLM.from_pretrained(name{on_branch}, trust_remote_code=True)",
            f"tokenizer = AutoTokenizer.from_pretrained(name{on_branch}, trust_remote_code=True)",
            *example, "```", "",
            remote_code + " The tokenizer is OpenAI's GPT-2 BPE in transformers' own `GPT2Tokenizer`; "
            "transformers 5's AutoTokenizer reads config.json first, hence the same `trust_remote_code`.",
        ]
    lines = [
        "## Use", "",
        "This repo holds transformers' own GPT-2 (`GPT2LMHeadModel`, vocabulary 50,257, OpenAI's GPT-2 tokenizer): it "
        "loads with no remote code in transformers 4.x and 5.x, in `pipeline`, and in the tools that take GPT-2 "
        "(vLLM, TGI, ONNX export, llama.cpp's GGUF conversion).", "",
        "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline", "",
        f'name = "{name}"',
        "model = AutoModelForCausalLM.from_pretrained(name)",
        "tokenizer = AutoTokenizer.from_pretrained(name)",
        *example,
        f'print(pipeline("text-generation", model=name)({SAMPLE_PROMPT!r}, max_new_tokens=30)[0]["generated_text"])',
        "```",
    ]
    if layout.gpt2repro:
        lines += [
            "", "### Continue training with gpt2repro", "",
            f"The `{GPT2REPRO_BRANCH}` branch holds the same weights as gpt2repro saved them (its model code, the "
            "vocabulary padded to a multiple of 64 rows for speed), for training on with this project:", "",
            "```python",
            f'model = AutoModelForCausalLM.from_pretrained("{name}", revision="{layout.gpt2repro}", '
            "trust_remote_code=True)",
            "```", "",
            remote_code + f" `revision` pins the commit of the `{GPT2REPRO_BRANCH}` branch this card was written with, "
            "so the code you read is the code that runs.",
        ]
    return lines


def card_body(report: dict, repo_id: str | None = None, layout: HubLayout | None = None) -> str:
    data, settings, training = report.get("data") or {}, report.get("settings") or {}, report.get("training") or {}
    code, final = report.get("code") or {}, report.get("final_eval") or {}
    n_params, steps, max_steps = training.get("n_params"), training.get("steps"), training.get("max_steps")
    size = f" ({n_params / 1e6:.1f}M parameters)" if n_params else ""
    on = data.get("hub_dataset") or data.get("name") or "its data"
    if data.get("hub_config"):
        on += f" ({data['hub_config']})"
    base = report.get("base_model")
    start = f"GPT-2 trained on from {base_model_text(base)}" if base else "A GPT-2 architecture trained from scratch"
    intro = f"{start} with gpt2repro's `train.py` on {training.get('tokens') or 0:,} tokens of {on}."
    if report.get("context_length"):
        trained_on = f" (trained on sequences of {settings['seq_len']:,})" if settings.get("seq_len") else ""
        intro += f" Context length: {report['context_length']:,} tokens{trained_on}."
    lines = [f"# gpt2repro: {settings.get('model', 'GPT-2')}{size} trained on {on}", "", intro]
    if steps is not None and max_steps and steps < max_steps:
        lines += ["", f"This checkpoint is from step {steps:,} of {max_steps:,}: training had not finished."]
    lines += [
        "",
        *use_lines(repo_id, layout),
        "",
        "## Results",
        "",
        *markdown_table(["metric", "this model", "OpenAI GPT-2 124M"], card_rows(final, data, settings)),
        "",
        val_loss_note(data),
        hellaswag_note(final, settings),
        "",
        "## Training",
        "",
        *training_lines(report),
        *hardware_lines(report),
        "",
    ]
    if report.get("curves"):
        lines += [f"![training curves]({report['curves']})", ""]
    lines += [
        "## Reproduce",
        "",
        "With gpt2repro at commit " + f"`{code.get('commit', 'unknown')}`"
        + (" (the run had uncommitted changes)" if code.get("dirty") else "") + ", after preparing the same data:",
        "",
        "```bash",
        reproduce_command(report),
        "```",
        "",
        f"The full run report is in [{RunDir.REPORT_MD}]({RunDir.REPORT_MD}) ([{RunDir.REPORT_JSON}]"
        f"({RunDir.REPORT_JSON}) for machines).",
        "",
        "## Limitations",
        "",
        limitations(n_params, final.get("val_loss")),
        "",
    ]
    return "\n".join(lines)


def card_rows(final: dict, data: dict, settings: dict) -> list[tuple[str, str, str]]:
    """The results table of the card: HellaSwag rows only where HellaSwag was scored, a local file named."""
    rows = results_rows(final, data)
    if final.get(HELLASWAG_ITEMS) is None:
        return [row for row in rows if not row[0].startswith("HellaSwag")]
    local = hellaswag_file(settings.get("hellaswag"), final.get(HELLASWAG_ITEMS))
    return [(f"{row[0]} (local file {local})" if local and row[0].startswith("HellaSwag") else row[0], *row[1:])
            for row in rows]


def hellaswag_note(final: dict, settings: dict) -> str:
    if final.get(HELLASWAG_ITEMS) is None:
        return ("HellaSwag was not evaluated in this run (train.py --hellaswag auto or FILE, or eval_hellaswag.py "
                "afterwards).")
    text = ("HellaSwag is scored in two conventions that give different numbers for the same model: completion style "
            "(build-nanogpt, llm.c) and lm-evaluation-harness style; both are reported, by the same code.")
    local = hellaswag_file(settings.get("hellaswag"), final.get(HELLASWAG_ITEMS))
    if local:
        text += (f" These scores are on {final[HELLASWAG_ITEMS]:,} items of the local file {local}, not on "
                 f"HellaSwag's {GPT2_124M_REFERENCE[HELLASWAG_ITEMS]:,} validation items: they do not compare with "
                 "GPT-2's.")
    return text


def limitations(n_params: int | None, val_loss: float | None) -> str:
    """What the model cannot do, in proportion to what it is: a small or barely trained model is not fluent."""
    base = "A base language model trained only to predict the next token: it is not instruction-tuned or aligned"
    if (n_params is not None and n_params < 100e6) or (val_loss is not None and val_loss > FLUENT_VAL_LOSS):
        at = f" at validation loss {val_loss:.2f}" if val_loss is not None else ""
        size = f"{n_params / 1e6:.1f}M-parameter" if n_params else "small"
        return (f"A {size} model{at}, far from GPT-2 (124M parameters, validation loss 3.29 on FineWeb-Edu): it has "
                "learned some word and punctuation statistics of its training text and writes mostly incoherent text. "
                "It demonstrates the training pipeline; it is not a language model to use for anything. " + base + ".")
    return base + ", writes fluent text that is often false, and reflects the biases of its training data."


def card_files(report: dict, repo_id: str | None = None, run_dir: Path | None = None) -> dict[str, str | Path]:
    """What a checkpoint folder holds for its readers, by file name: README.md (the card, made from `report`), and
    run_dir's curves, report.md and report.json (files to copy) where they exist. `repo_id`: the Hub repo the folder
    will be pushed to, if any (None: the card names no path of this machine)."""
    run_dir = RunDir(run_dir) if run_dir is not None else None
    names = (RunDir.CURVES, RunDir.REPORT_MD, RunDir.REPORT_JSON)
    files = {name: run_dir.path / name for name in names if run_dir is not None and (run_dir.path / name).is_file()}
    report = dict(report, curves=RunDir.CURVES if RunDir.CURVES in files else None)
    return {**files, "README.md": str(build_model_card(report, repo_id))}


def write_model_card(folder: Path, report: dict, repo_id: str | None = None, run_dir: Path | None = None) -> None:
    """folder/README.md, with run_dir's curves.png, report.md and report.json copied beside it; the context length
    from the folder's config.json where the report does not give it."""
    write_files(folder, card_files(with_context_length(report, folder), repo_id, run_dir))


def with_context_length(report: dict, folder: Path) -> dict:
    """`report` with the context length of the checkpoint in `folder` (its config.json) where it does not give one."""
    if report.get("context_length"):
        return report
    try:
        return dict(report, context_length=json.loads((Path(folder) / "config.json").read_text())["n_positions"])
    except (OSError, ValueError, KeyError):
        return report



# ----------------------------------------------------------------------------------------------
# adding eval_hellaswag.py results to a card


def add_eval_results(card: ModelCard, summary: dict, model_name: str, data: dict | None = None,
                     hellaswag_source: str | None = None) -> ModelCard:
    """Merge an eval_hellaswag.py summary (HellaSwag scores, val_loss, val_tokens, ...) into the card's
    model-index, replacing what it measures again, and (re)write the card's eval_hellaswag section. `data`:
    report.describe_data() of the --val-data directory; `hellaswag_source`: its --data file (None: the downloaded
    validation set)."""
    names = (HELLASWAG_ITEMS, *(metric.name for metric in HELLASWAG_METRICS), "val_loss", "val_bpb", "val_tokens")
    scores = {name: summary[name] for name in names if name in summary}
    card.data.eval_results = merge_eval_results(card.data.eval_results, eval_results(scores, data, hellaswag_source))
    card.data.model_name = card.data.model_name or model_name
    section = "\n".join([
        EVAL_SECTION[0], "## Evaluation (eval_hellaswag.py)", "",
        *markdown_table(["metric", "this model", "OpenAI GPT-2 124M"], results_rows(scores, data or {})),
        "", f"Scored on {summary.get('device', 'n/a')} in {summary.get('dtype', 'n/a')}.", EVAL_SECTION[1],
    ])
    text = card.text
    start, end = text.find(EVAL_SECTION[0]), text.find(EVAL_SECTION[1])
    if start != -1 and end > start:
        card.text = text[:start] + section + text[end + len(EVAL_SECTION[1]):]
    else:
        card.text = text.rstrip("\n") + "\n\n" + section + "\n"
    return card


def load_card(repo_id: str) -> ModelCard:
    """The model card of a Hub repo: before hours of evaluation, so a wrong id or no network fails first."""
    check_repo_id(repo_id, "--push-results", PublishError)
    try:
        return ModelCard.load(repo_id)
    except Exception as e:  # offline, no such repo, no README, no permission
        raise PublishError(f"could not read the model card of {repo_id} ({first_line(e, with_type=True)}); check "
                           "the repo id, your network and `hf auth login`") from None


def upload_card(card: ModelCard, repo_id: str) -> None:
    """Replace README.md in the repo, and nothing else."""
    try:
        HfApi().create_commit(
            repo_id, operations=[CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode())],
            commit_message="Add eval_hellaswag.py results",
        )
    except Exception as e:
        raise PublishError(f"could not update the model card of {repo_id} ({first_line(e, with_type=True)}); "
                           "nothing on the Hub changed, and the scores above (and any --output file) are intact"
                           ) from None


# ----------------------------------------------------------------------------------------------
# the upload


def files_to_upload(folder: Path) -> list[str]:
    """The top-level files of a checkpoint folder that its users need, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PublishError(f"{folder}: no such directory; push {WRITTEN_BY_TRAIN}")
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, pattern) for pattern in UPLOAD_PATTERNS)]
    if "config.json" not in chosen or not any(n.endswith(".safetensors") for n in chosen):
        raise PublishError(f"{folder} is not a checkpoint (no config.json and *.safetensors); push a folder "
                           "that train.py or save_pretrained wrote")
    return chosen


def check_push_access(repo_id: str, private: bool = False) -> str:
    """Before training: the login, the right to write to `repo_id`'s namespace and, for a private push, that the repo
    is not public. Returns the line to print; raises PublishError naming what to do, so a run that cannot push
    fails in seconds, not after hours of training."""
    check_repo_id(repo_id, "--push-to-hub", PublishError)  # a malformed id: its own short line, not a login error
    api = HfApi()
    try:
        me = api.whoami()
    except Exception as e:  # offline, no token, a revoked token
        reason = first_line(e, with_type=True)
        raise PublishError(f"--push-to-hub {repo_id}: cannot check the Hugging Face login ({reason}); run "
                           "`hf auth login` with a write token, or train without --push-to-hub and push "
                           "final/ later with `python convert_gpt2.py push`") from None
    namespace = repo_id.split("/")[0] if "/" in repo_id else me.get("name")
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise PublishError(f"--push-to-hub {repo_id}: the token of {me.get('name')} is read-only; log in with a "
                           "write token (`hf auth login`)")
    if namespace not in {me.get("name"), *(org.get("name") for org in me.get("orgs") or [])}:
        raise PublishError(f"--push-to-hub {repo_id}: {me.get('name')} cannot write to {namespace}; use "
                           f"{me.get('name')}/{repo_id.split('/')[-1]} or an organization you belong to")
    try:
        public = not api.repo_info(repo_id).private
    except Exception:  # no such repo yet (created at the push), or not visible to us: the push will say
        public = None
    if private and public:
        raise PublishError(f"--push-to-hub {repo_id}: the repo exists and is public, and --hub-private asks for a "
                           "private one; make it private on the Hub first, or drop --hub-private")
    kind = "private" if private or public is False else "public"
    return f"push: logged in as {me.get('name')}; final/ goes to https://huggingface.co/{repo_id} ({kind}) at the end"


def push_command(folder: Path, repo_id: str, private: bool = False, hub_format: str = "both") -> str:
    """The command that pushes `folder` again: what a failed push says to rerun."""
    flags = (f" --hub-format {hub_format}" if hub_format != "both" else "") + (" --private" if private else "")
    return f"python convert_gpt2.py push {folder} {repo_id}{flags}"


def _card_for(folder: Path, repo_id: str, layout: HubLayout) -> dict[str, str]:
    """README.md for one revision of the push: made from the folder's report.json where there is one (the card of
    the layout), else the folder's own README.md, else none."""
    try:
        report = json.loads((folder / RunDir.REPORT_JSON).read_text())
    except (OSError, ValueError):
        readme = folder / "README.md"
        return {"README.md": readme.read_text()} if readme.is_file() else {}
    report = dict(with_context_length(report, folder), curves=RunDir.CURVES if (folder / RunDir.CURVES).is_file()
                  else None)
    return {"README.md": str(build_model_card(report, repo_id, layout))}


def _operations(api: HfApi, repo_id: str, revision: str | None, files: dict[str, Path | str]) -> list:
    """One commit's operations: `files` (name: a file to upload or text), and the deletion of the files an earlier
    push left at `revision` that this one replaces (REPLACED_PATTERNS) and does not write again."""
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=content.encode() if isinstance(content, str)
                                     else str(content)) for name, content in sorted(files.items())]
    try:
        existing = api.list_repo_files(repo_id, revision=revision)
    except Exception:  # a new repo or branch: nothing to replace
        existing = []
    stale = [name for name in existing if name not in files and "/" not in name
             and any(fnmatch.fnmatchcase(name, pattern) for pattern in REPLACED_PATTERNS)]
    return operations + [CommitOperationDelete(path_in_repo=name) for name in stale]


def push_to_hub(folder: Path, repo_id: str, private: bool = False, hub_format: str = "both") -> str:
    """Upload a checkpoint folder to `repo_id`, each revision in one commit; returns the repo's URL. `hub_format`:
    both (native GPT-2 on main, our checkpoint on GPT2REPRO_BRANCH), native or gpt2repro (that one alone, on main)."""
    if hub_format not in HUB_FORMATS:
        raise PublishError(f"unknown hub format {hub_format!r}; choose one of: {', '.join(HUB_FORMATS)}")
    check_repo_id(repo_id, "repo", PublishError)
    folder = Path(folder)
    ours = {name: folder / name for name in files_to_upload(folder) if name != "README.md"}
    # a push of --hub-format gpt2repro exports nothing that would refuse another folder
    check_ours(folder, PublishError, f"push {WRITTEN_BY_TRAIN}")
    native, gpt2repro = hub_format in ("both", "native"), hub_format in ("both", "gpt2repro")
    branch = GPT2REPRO_BRANCH if native and gpt2repro else None
    extras = {name: folder / name for name in (RunDir.CURVES, RunDir.REPORT_MD, RunDir.REPORT_JSON) if name in ours}
    api = HfApi()
    with tempfile.TemporaryDirectory(prefix="gpt2repro-export-") as exported:
        if native:  # before the Hub: a folder that does not convert uploads nothing
            export_gpt2(folder, exported)
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            if private and not api.repo_info(repo_id).private:  # create_repo leaves an existing repo as it is
                raise PublishError(f"{repo_id} exists and is public: nothing was uploaded; make it private on the Hub "
                                   "first, or push without private")
            revision = None
            if gpt2repro:
                if branch:
                    api.create_branch(repo_id, branch=branch, exist_ok=True)
                layout = HubLayout(native=False, gpt2repro=branch or "main")
                files = {**ours, **_card_for(folder, repo_id, layout)}
                commit = api.create_commit(repo_id, operations=_operations(api, repo_id, branch, files),
                                           commit_message="Upload gpt2repro checkpoint", revision=branch)
                revision = getattr(commit, "oid", None) or branch
            if native:
                files = {p.name: p for p in Path(exported).iterdir() if p.is_file()}
                card = _card_for(folder, repo_id, HubLayout(native=True, gpt2repro=revision))
                api.create_commit(repo_id, operations=_operations(api, repo_id, None, {**files, **extras, **card}),
                                  commit_message="Upload GPT-2 (GPT2LMHeadModel) exported from a gpt2repro checkpoint")
        except PublishError:
            raise
        except Exception as e:  # offline, no token, no permission: the local checkpoint stays as it is
            raise PublishError(f"could not push {folder} to {repo_id} ({first_line(e, with_type=True)}); the checkpoint "
                               f"is intact: retry with `{push_command(folder, repo_id, private, hub_format)}` once "
                               "online and logged in") from None
    return str(url)
