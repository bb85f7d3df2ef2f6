"""A report of every training run: what ran, from which code, on what hardware, for how long and at what
cost, and how the model compares with OpenAI's GPT-2 (124M).

train.py writes RUN_DIR/report.json and RUN_DIR/report.md at every save and at the end of a run
(write_report); `run_report.py` re-renders them with the side-by-side table of an `eval_hellaswag.py --output`
file.

This module owns the published GPT-2 figures (GPT2_124M_REFERENCE) and which of them applies to which data.
"""

import io
import json
import shlex
from pathlib import Path

import yaml

from gpt2repro.checkpoints import RunDir
from gpt2repro.errors import UserError
from gpt2repro.export import base_model
from gpt2repro.fileio import write_atomically
from gpt2repro.hellaswag import HELLASWAG_ITEMS, HELLASWAG_METRICS, HELLASWAG_VAL_ITEMS
from gpt2repro.hub_data import download_origin
from gpt2repro.provenance import provenance
from gpt2repro.token_shards import VAL_TOKENS, ShardError, load_manifest

SAMPLE_PROMPT = "Hello, I'm a language model,"  # train.py's samples and the model card's example
# OpenAI's GPT-2 (124M) on all of HellaSwag validation, by (convention, accuracy): completion style as
# build-nanogpt / llm.c score it, lm-eval style as lm-evaluation-harness does.
_PUBLISHED_HELLASWAG = {("completion", "acc"): 0.2859, ("completion", "acc_norm"): 0.2955,
                        ("lm_eval", "acc"): 0.2892, ("lm_eval", "acc_norm"): 0.3114}
# Published figures of OpenAI's GPT-2 (124M), the one place they are written: everything else, prose included, reads
# them from here. Accuracies as fractions, under the names of every HellaSwag summary.
GPT2_124M_REFERENCE = {
    HELLASWAG_ITEMS: HELLASWAG_VAL_ITEMS,
    **{metric.name: _PUBLISHED_HELLASWAG[metric.convention, metric.kind] for metric in HELLASWAG_METRICS},
    "fineweb_edu_val_loss": 3.2924,  # OpenAI's gpt2 on FineWeb-Edu val, as measured by build-nanogpt
    # Not GPT-2's own figure: the FineWeb (not Edu) val target of llm.c's GPT-2 reproduction and the
    # modded-nanogpt speedrun (first 10,485,760 val tokens).
    "fineweb_val_loss_target": 3.28,
}
# Which validation figure compares with which data: a loss is comparable only on the same data.
VAL_LOSS_REFERENCES = {
    "fineweb-edu": ("fineweb_edu_val_loss", "OpenAI GPT-2 124M on FineWeb-Edu val, measured by build-nanogpt"),
    "fineweb": ("fineweb_val_loss_target", "the llm.c / modded-nanogpt target on FineWeb val, not GPT-2's own"),
}


class ReportError(UserError, ValueError):
    """A report that cannot be written or re-rendered: the message says which file and what to do."""


# ----------------------------------------------------------------------------------------------
# what the report collects itself


def hardware(device_type: str, world_size: int) -> dict:
    from gpt2repro.throughput import device_name  # imports torch: only where hardware is described

    if device_type == "cuda":
        import torch

        return {"device_type": "cuda", "device": device_name("cuda"), "gpus": world_size,
                "gpus_per_node": torch.cuda.device_count(), "cuda": torch.version.cuda}
    return {"device_type": device_type, "device": device_name("cpu"), "gpus": 0, "processes": world_size}


def data_family(name: str | None) -> str | None:
    """"fineweb-edu", "fineweb" or None, from a Hub id or a shard directory's name (llm.c writes
    fineweb10B/, build-nanogpt edu_fineweb10B/)."""
    name = (name or "").lower()
    if "fineweb" not in name:
        return None
    return "fineweb-edu" if "edu" in name else "fineweb"


def describe_data(data_dir: str | Path) -> dict:
    """What the model was trained on, from the data's manifest, and which published validation figure
    (if any) its loss compares with: the Hub id decides where there is one, else the directory name."""
    data_dir = Path(data_dir)
    try:
        manifest = load_manifest(data_dir)
    except ShardError:  # not a data directory (any more): the report still gets written
        manifest = None
    origin = download_origin(data_dir)
    source = (manifest or {}).get("source") or {}
    hub_id = source.get("dataset") if source.get("type") in ("hub", "hub tokens") else None
    info = {
        "dir": str(data_dir),
        "name": (manifest or {}).get("name") or data_dir.name,
        "hub_dataset": hub_id,
        "hub_config": source.get("name") if hub_id else None,
        "source_type": source.get("type", "unknown"),
        "family": data_family(hub_id or data_dir.name),
        "family_from": "Hub dataset id" if hub_id else "directory name",
    }
    if manifest:
        info.update({f"{split}_tokens": manifest["splits"][split]["tokens"] for split in ("train", "val")})
    info["tokens_from"] = {"repo_id": origin["repo_id"], "revision": origin.get("revision")} if origin else None
    return info


def tokens_line(data: dict) -> str:
    """Where the training tokens came from: downloaded from a Hub dataset repo, or tokenized here."""
    origin = data.get("tokens_from")
    if origin:
        return (f"- data: {data.get('name')}, tokens downloaded from the Hub dataset {origin['repo_id']} "
                f"(revision {(origin.get('revision') or 'unknown')[:12]}), not tokenized here")
    return f"- data: {data.get('name', 'n/a')}, tokenized here ({data.get('source_type', 'unknown')} source)"


def val_loss_reference(data: dict) -> dict | None:
    """{"value", "label"} of the published figure this data's validation loss compares with, or None."""
    if data.get("family") not in VAL_LOSS_REFERENCES:
        return None
    key, label = VAL_LOSS_REFERENCES[data["family"]]
    return {"value": GPT2_124M_REFERENCE[key], "label": label}


def cost(seconds: dict, hw: dict, gpu_hour_usd: float | None) -> dict | None:
    """GPU-hours and a cost estimate; None on CPU. Billed on the wall time (evaluation and checkpoints
    included), since that is what a rented machine costs; the optimizer-step share is given beside it."""
    if hw.get("device_type") != "cuda" or not hw.get("gpus"):
        return None
    total = seconds.get("total_seconds") or seconds.get("train_seconds")
    gpu_hours = None if total is None else total * hw["gpus"] / 3600
    train = seconds.get("train_seconds")
    return {
        "gpu_hours": gpu_hours,
        "gpu_hours_basis": "wall time incl. evaluation and checkpoints" if seconds.get("total_seconds") is not None
        else "optimizer steps only (no wall time recorded)",
        "train_gpu_hours": None if train is None else train * hw["gpus"] / 3600,
        "usd_per_gpu_hour": gpu_hour_usd,
        "usd": None if gpu_hours is None or gpu_hour_usd is None else gpu_hours * gpu_hour_usd,
    }


# ----------------------------------------------------------------------------------------------
# the report


def build_report(run_dir: Path, facts: dict, eval_results: dict | None = None) -> dict:
    """The report dict from what train.py knows (`facts`) plus what this module collects."""
    settings = facts.get("settings") or {}
    world = facts.get("world_size") or 1
    hw = hardware(facts.get("device_type", "cpu"), world)
    data = describe_data(settings["data_dir"]) if settings.get("data_dir") else {}
    training = {key: facts.get(key) for key in (
        "n_params", "steps", "tokens", "train_seconds", "total_seconds", "mean_tokens_per_sec", "mean_mfu",
        "peak_flops_source", "precision", "compile", "world_size",
    )}
    training["max_steps"] = settings.get("max_steps")
    return {
        "report_version": 1,
        **provenance(),
        "command": list(facts.get("command") or []),
        "preset": facts.get("preset"),
        "settings": settings,
        "base_model": base_model(settings.get("init_from")),
        "hardware": hw,
        "data": data,
        "training": training,
        "cost": cost(training, hw, settings.get("gpu_hour_usd")),
        "final_eval": dict(facts.get("final_eval") or {}),
        "reference": {"val_loss": val_loss_reference(data), "gpt2_124m": GPT2_124M_REFERENCE},
        "curves": RunDir.CURVES if RunDir(run_dir).curves.is_file() else None,
        "eval_results": eval_summaries(eval_results),
    }


def write_report(run_dir: Path, facts: dict, eval_results: dict | None = None) -> dict:
    """Write RUN_DIR/report.json and RUN_DIR/report.md (atomically) and return the report."""
    report = build_report(Path(run_dir), facts, eval_results)
    save_report(Path(run_dir), report)
    return report


def save_report(run_dir: Path, report: dict) -> None:
    run_dir = RunDir(run_dir)
    run_dir.path.mkdir(parents=True, exist_ok=True)
    write_atomically(run_dir.report_json, json.dumps(report, indent=1) + "\n")
    write_atomically(run_dir.report_md, render_markdown(report))


def eval_summaries(eval_results: dict | None) -> dict | None:
    """{"models": {model: summary}, "val_data": describe_data(...) | None} of an eval_hellaswag.py --output
    file, its per-item log-likelihoods left out."""
    if eval_results is None:
        return None
    models = eval_results.get("models") if isinstance(eval_results, dict) else None
    if not isinstance(models, dict) or not all(isinstance(m, dict) and "summary" in m for m in models.values()):
        raise ReportError("the eval results hold no {'models': {name: {'summary': ...}}}; pass the JSON file "
                          "that eval_hellaswag.py --output writes")
    val_data = eval_results.get("val_data")
    return {"models": {name: result["summary"] for name, result in models.items()},
            "val_data": describe_data(val_data) if val_data else None}




def fill_final_eval(report: dict, run_dir: Path) -> None:
    """Fill the run's results the training did not measure (HellaSwag off, say) from the eval results of this run's
    own checkpoint (a model name that is a path inside run_dir); what training measured is kept."""
    run_dir = Path(run_dir).resolve()
    models = (report.get("eval_results") or {}).get("models") or {}
    own = [name for name in models if Path(name).resolve() == run_dir or run_dir in Path(name).resolve().parents]
    if not own:
        return
    summary, final = models[own[-1]], report.setdefault("final_eval", {})
    validation = ("val_loss", "val_bpb", "val_tokens")
    hellaswag = (HELLASWAG_ITEMS, *(m.name for m in HELLASWAG_METRICS))
    renamed = {k: v for k, v in summary.items() if k in validation + hellaswag}
    filled = sorted(k for k in renamed if final.get(k) is None)
    if not filled:
        return
    # the figures of one evaluation go together: a loss and a token count from different evaluations would mislead
    for group in (validation, hellaswag):
        if any(k in filled for k in group):
            final.update({k: renamed[k] for k in group if k in renamed})
    report["final_eval_from"] = {"model": own[-1], "keys": filled}


# ----------------------------------------------------------------------------------------------
# the curves


def plot_curves(rows: list[dict], path: Path, val_reference: dict | None) -> None:
    """curves_figure of metrics rows, written to `path` as a PNG."""
    fig = curves_figure(rows, val_reference)
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=100, bbox_inches="tight")  # tight: the legends below the panels too
    write_atomically(path, image.getvalue())


def curves_figure(rows: list[dict], val_reference: dict | None):
    """Loss, bits-per-byte and (when evaluated) HellaSwag panels over one step axis, each with the published figures
    it compares with (both HellaSwag conventions); legends below the panels, never over the curves."""
    # a Figure of its own, not pyplot's: no global figure list to close, no GUI backend chosen, less to import
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    def plot(ax, key, style, label, **kwargs):  # only what was logged: no empty legend entries
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            ax.plot(*zip(*points), style, label=label, **kwargs)
        return bool(points)

    acc_norms = [m for m in HELLASWAG_METRICS if m.kind == "acc_norm"]
    hella = any(m.name in r for r in rows for m in acc_norms)
    # one shared step axis: a single evaluation is a point at its step of the run, not alone on a 1-step axis
    fig = Figure(figsize=(16 if hella else 11, 4.5))
    axes = fig.subplots(1, 3 if hella else 2, sharex=True)
    ax_loss, ax_bpb = axes[:2]
    plot(ax_loss, "loss", "-", "train loss", alpha=0.6)
    plot(ax_loss, "val_loss", "o-", "val loss")
    if val_reference:
        ax_loss.axhline(val_reference["value"], color="r", ls="--", label=val_reference["label"])
    ax_loss.set(xlabel="step", ylabel="loss (nats/token)", title="loss")
    plot(ax_bpb, "val_bpb", "o-", "val bits per byte")
    ax_bpb.set(xlabel="step", ylabel="bits per byte", title="validation bits per byte")
    if hella:
        for metric, style, color in zip(acc_norms, ("o-", "s-"), ("C0", "C1")):
            name = metric.convention.replace("_", "-")
            plot(axes[2], metric.name, style, f"acc_norm ({name})", color=color)
            axes[2].axhline(GPT2_124M_REFERENCE[metric.name], color=color, ls="--", label=f"OpenAI GPT-2 124M ({name})")
        axes[2].set(xlabel="step", ylabel="accuracy", title="HellaSwag")
    steps = [r["step"] for r in rows]
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if steps:
            ax.set_xlim(0, max(steps) + 1)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize="small", frameon=False)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# rendering


def _num(value, spec: str = ".4f", scale: float = 1.0) -> str:
    return "n/a" if value is None else format(value * scale if scale != 1.0 else value, spec)


def _duration(seconds) -> str:
    if seconds is None:
        return "n/a"
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def reproduce_command(report: dict) -> str:
    """The command line that ran, with the launcher a multi-process run needs."""
    argv = list(report.get("command") or [])
    if not argv:
        return "n/a"
    if argv[0].endswith(".py"):
        argv[0] = Path(argv[0]).name  # the user's checkout lives elsewhere
    world = (report.get("training") or {}).get("world_size") or 1
    launcher = ["python"] if world == 1 else ["accelerate", "launch", "--multi_gpu", "--num_processes", str(world)]
    per_node = (report.get("hardware") or {}).get("gpus_per_node")
    if world > 1 and per_node and world > per_node:
        launcher += ["--num_machines", str(world // per_node), "--machine_rank", "RANK", "--main_process_ip", "IP"]
    return shlex.join(launcher + argv)


def results_rows(final_eval: dict, data: dict) -> list[tuple[str, str, str]]:
    """(metric, this model, OpenAI GPT-2 124M) rows of a results table; `data` is describe_data() of the
    validation data, which decides the published loss it compares with."""
    ref, val_ref = GPT2_124M_REFERENCE, val_loss_reference(data)
    val_label = f"validation loss ({data.get('name', 'val')}, {_num(final_eval.get('val_tokens'), ',')} tokens)"
    val_cell = f"{val_ref['value']} ({val_ref['label']})" if val_ref else "n/a"
    if val_ref and final_eval.get("val_tokens") not in (None, VAL_TOKENS):  # e.g. llm.c's whole 100M val shard
        val_cell += f"; scored on the first {VAL_TOKENS:,} tokens, so not directly comparable"
    rows = [
        (val_label, _num(final_eval.get("val_loss")), val_cell),
        ("validation bits per byte", _num(final_eval.get("val_bpb")), "n/a"),
    ]
    items = final_eval.get(HELLASWAG_ITEMS)
    subset = f" [{items:,} items]" if items is not None and items != ref[HELLASWAG_ITEMS] else ""
    for metric in HELLASWAG_METRICS:
        rows.append((metric.label + subset, _num(final_eval.get(metric.name), ".2f", 100),
                     f"{100 * ref[metric.name]:.2f}"))
    return rows


def markdown_table(header: list[str], rows: list, right: frozenset = frozenset()) -> list[str]:
    """The lines of a markdown table; columns whose index is in `right` are right-aligned. Pipes and newlines in
    cells are escaped, so a message cannot break the table."""

    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    align = ["---:" if i in right else "---" for i in range(len(header))]
    return ["| " + " | ".join(map(cell, line)) + " |" for line in [header, align, *rows]]


def val_loss_note(data: dict) -> str:
    ref = val_loss_reference(data)
    if ref:
        return (f"The validation data is {data.get('family')} (by its {data.get('family_from')}): its loss compares "
                f"with {ref['value']}, {ref['label']}.")
    known = ", ".join(f"{family} with {GPT2_124M_REFERENCE[key]}" for family, (key, _) in VAL_LOSS_REFERENCES.items())
    return (f"No published GPT-2 validation loss exists for this data ({known}): compare validation losses only on "
            "the same data.")


def render_markdown(report: dict) -> str:
    tr, code, data = report.get("training") or {}, report.get("code") or {}, report.get("data") or {}
    settings, final = report.get("settings") or {}, report.get("final_eval") or {}
    n_params = tr.get("n_params")
    dirty = {True: " (with uncommitted changes)", False: "", None: ""}[code.get("dirty")]
    lines = [
        f"# Run report: {settings.get('model', 'model')}"
        + (f" ({n_params / 1e6:.1f}M parameters)" if n_params else "")
        + (f", preset {report['preset']}" if report.get("preset") else ""),
        "",
        f"Written {report.get('created', 'n/a')} from gpt2repro commit `{code.get('commit', 'unknown')}`{dirty}.",
        "",
        "## Results",
        "",
        *markdown_table(["metric", "this run", "OpenAI GPT-2 124M"], results_rows(final, data)),
        "",
        val_loss_note(data),
        *([f"Filled in by eval_hellaswag.py on `{report['final_eval_from']['model']}`: "
           f"{', '.join(report['final_eval_from']['keys'])}."] if report.get("final_eval_from") else []),
        "",
        "## Training",
        "",
        *training_lines(report),
        "",
        "## Hardware and cost",
        "",
        *hardware_lines(report),
        "",
        "## Reproduce",
        "",
        "```bash",
        reproduce_command(report),
        "```",
        "",
        f"at gpt2repro commit `{code.get('commit', 'unknown')}`{dirty}.",
        "",
    ]
    if report.get("curves"):
        lines += ["## Curves", "", f"![curves]({report['curves']})", ""]
    if report.get("eval_results"):
        lines += ["## Side by side (eval_hellaswag.py)", "", *eval_table(**report["eval_results"]), ""]
    versions = report.get("versions") or {}
    lines += [
        "## Settings", "", "```yaml", yaml.safe_dump(settings, sort_keys=False).strip(), "```", "",
        "## Software", "", ", ".join(f"{k} {v}" for k, v in versions.items() if v), "", *lock_lines(report),
    ]
    return "\n".join(lines)


def lock_lines(report: dict) -> list[str]:
    lock = report.get("lock")
    if not lock:
        return []
    differs = lock.get("not_as_locked") or []
    match = f"installed otherwise: {', '.join(differs)}" if differs else "every locked version installed"
    return [f"Dependencies: {lock['file']} sha256 `{lock['sha256'][:16]}`; {match}.", ""]


def base_model_text(base: dict) -> str:
    """A run's base model as the report and the card name it: its Hub repo, or a local folder by its name alone."""
    return f"`{base['hub_id']}`" if base.get("hub_id") else f"the local folder `{Path(base['name']).name}`"


def training_lines(report: dict) -> list[str]:
    tr, settings, base = report.get("training") or {}, report.get("settings") or {}, report.get("base_model")
    return [
        *([f"- started from the weights of {base_model_text(base)} (--init-from), with a fresh optimizer and "
             "learning-rate schedule"] if base else []),
        *([tokens_line(report["data"])] if report.get("data") else []),
        f"- steps: {_num(tr.get('steps'), ',')} of {_num(tr.get('max_steps'), ',')}; "
        f"tokens: {_num(tr.get('tokens'), ',')}"
        f" in batches of {_num(settings.get('total_batch_tokens'), ',')} tokens (sequences of "
        f"{settings.get('seq_len', 'n/a')})",
        f"- optimizer: {optimizer_line(settings)}",
        f"- time: {_duration(tr.get('train_seconds'))} of optimizer steps, {_duration(tr.get('total_seconds'))} "
        "wall including evaluation and checkpoints (summed over resumptions)",
        f"- throughput: {_num(tr.get('mean_tokens_per_sec'), ',.0f')} tokens/s mean, MFU "
        f"{_num(tr.get('mean_mfu'), '.1f', 100)}% (peak FLOP/s: {tr.get('peak_flops_source') or 'n/a'})",
        f"- precision {tr.get('precision') or 'n/a'}, torch.compile {'on' if tr.get('compile') else 'off'}, "
        f"{tr.get('world_size') or 1} process(es)",
    ]


def optimizer_line(settings: dict) -> str:
    """What updated the weights, at what peak rates, on which schedule (runs from before --optimizer were AdamW's,
    on the cosine)."""
    lr = settings.get("lr", "n/a")
    if settings.get("optimizer") == "muon":
        what = (f"Muon on the blocks' matrices (peak lr {settings.get('muon_lr', 'n/a')}), AdamW on the embeddings, "
                f"LayerNorms and biases (peak lr {lr})")
    else:
        what = f"AdamW (peak lr {lr})"
    if settings.get("lr_schedule") == "wsd":
        schedule = f"flat, then linear over the last {_num(settings.get('cooldown_frac'), '.0%')} of the steps (WSD)"
    else:
        schedule = "cosine"
    return f"{what}; {settings.get('warmup_steps', 'n/a')} warmup steps, then {schedule} to " \
           f"{settings.get('min_lr_ratio', 'n/a')} x the peak"


def hardware_lines(report: dict) -> list[str]:
    hw, c = report.get("hardware") or {}, report.get("cost")
    if hw.get("device_type") != "cuda":
        return [f"- {hw.get('processes', 1)} process(es) on {hw.get('device', 'a CPU')}", "- cost: n/a (CPU run)"]
    lines = [f"- {hw.get('gpus')} x {hw.get('device')} (CUDA {hw.get('cuda') or 'n/a'})"]
    if c:
        lines.append(f"- GPU-hours: {_num(c['gpu_hours'], '.2f')} ({c['gpu_hours_basis']} x {hw.get('gpus')} GPUs); "
                     f"{_num(c['train_gpu_hours'], '.2f')} for the optimizer steps alone")
        lines.append(f"- cost estimate: ${_num(c['usd'], ',.2f')} at ${_num(c['usd_per_gpu_hour'], '.2f')} per "
                     "GPU-hour (set with --gpu-hour-usd)")
    return lines


def eval_table(models: dict, val_data: dict | None = None) -> list[str]:
    """Every evaluated model beside the published GPT-2 figures, accuracies in percent."""
    with_val = any("val_loss" in s for s in models.values())
    header = ["model", "items", *(metric.label.removeprefix("HellaSwag ") for metric in HELLASWAG_METRICS)]
    header += ["val loss"] if with_val else []
    rows = []
    for name, s in models.items():
        row = [f"`{name}`", _num(s.get(HELLASWAG_ITEMS), ","),
               *(_num(s.get(metric.name), ".2f", 100) for metric in HELLASWAG_METRICS)]
        rows.append(row + ([_num(s.get("val_loss"))] if with_val else []))
    ref = GPT2_124M_REFERENCE
    published = ["OpenAI GPT-2 124M (published)", f"{ref[HELLASWAG_ITEMS]:,}",
                 *(f"{100 * ref[metric.name]:.2f}" for metric in HELLASWAG_METRICS)]
    val_ref = val_loss_reference(val_data or {})
    rows.append(published + ([_num(val_ref["value"] if val_ref else None)] if with_val else []))
    lines = markdown_table(header, rows)
    if with_val and val_data:
        lines += ["", f"Validation loss on {val_data['dir']}. {val_loss_note(val_data)}"]
    return lines


