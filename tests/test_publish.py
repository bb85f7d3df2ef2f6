"""Publishing: the model card round-trips through huggingface_hub; a push puts transformers' own GPT-2 on the
repo's main branch and our checkpoint on a branch, exactly the files their users need, and both load as users load
them (against the stand-in Hub, tests/stand_in_hub.py); eval_hellaswag.py adds its results to the Hub card; the
trackers record exactly the scalars of metrics.jsonl."""

import json
import math
import os
import subprocess
import sys
import textwrap

import huggingface_hub
import pytest
import torch
from conftest import REPO, SEQ, as_hub_dataset, run_in_process
from huggingface_hub import HfApi, ModelCard, constants

from gpt2repro import model_card
from gpt2repro import report as reporting
from gpt2repro.provenance import git_state
from gpt2repro.report import SAMPLE_PROMPT

FIXTURE = REPO / "tests" / "fixtures" / "hellaswag_tiny.jsonl"
TOKENIZER_FILES = ["merges.txt", "tokenizer.json", "tokenizer_config.json", "vocab.json"]
REPORT_FILES = ["README.md", "curves.png", "report.json", "report.md"]
# our checkpoint, as train.py saves it (training_state/ aside)
USER_FILES = sorted([*REPORT_FILES, *TOKENIZER_FILES, "config.json", "configuration_gpt2repro.py",
                     "generation_config.json", "model.safetensors", "modeling_gpt2repro.py"])
# transformers' own GPT-2, as OpenAI's gpt2 repo holds it, with the card and the report
NATIVE_FILES = sorted([*REPORT_FILES, *TOKENIZER_FILES, "config.json", "generation_config.json", "model.safetensors"])
REPO_ID = "someone/gpt2-repro"


@pytest.fixture(scope="module")
def fineweb_edu(data_dir, tmp_path_factory):
    """The same shards, their manifest saying they were streamed from HuggingFaceFW/fineweb-edu."""
    return as_hub_dataset(data_dir, tmp_path_factory.mktemp("hub"), "HuggingFaceFW/fineweb-edu", "sample-10BT")


@pytest.fixture
def no_peak_probe(monkeypatch):
    """MFU's CPU peak without its seconds-long matmul probe: the trackers log whatever MFU is."""
    from gpt2repro import throughput

    monkeypatch.setattr(throughput, "_matmul_probe", lambda device, dtype: 1e11)
    throughput.device_peak_flops.cache_clear()
    yield
    throughput.device_peak_flops.cache_clear()


def make_report(run_dir, data_dir, **final_eval):
    final = dict(val_loss=3.05, val_bpb=0.93, val_tokens=10_485_760, hellaswag_items=10_042,
                 hellaswag_completion_acc=0.3, hellaswag_completion_acc_norm=0.3123,
                 hellaswag_lm_eval_acc=0.305, hellaswag_lm_eval_acc_norm=0.3301)
    final.update(final_eval)
    facts = dict(command=["train.py", "--preset", "gpt2-124m"], preset="gpt2-124m", world_size=1, device_type="cpu",
                 settings=dict(model="gpt2", data_dir=str(data_dir), run_dir=str(run_dir), max_steps=19_073),
                 steps=19_073, tokens=10**10, n_params=124_475_904, final_eval=final)
    return reporting.write_report(run_dir, facts)


@pytest.fixture
def checkpoint(tmp_path, tiny_config, fineweb_edu):
    """A final/ folder as train.py leaves it: save_pretrained + tokenizer + card + training_state/."""
    from modeling_gpt2repro import GPT2ReproForCausalLM
    from gpt2repro.tokenizer import save_tokenizer

    run_dir, folder = tmp_path / "run", tmp_path / "run" / "final"
    GPT2ReproForCausalLM(tiny_config).save_pretrained(folder)
    save_tokenizer(folder, tiny_config.n_positions)
    (folder / "training_state").mkdir()
    for name in ("optimizer.bin", "random_states_0.pkl", "trainer_state.json"):
        (folder / "training_state" / name).write_bytes(b"state")
    (run_dir / "curves.png").write_bytes(b"\x89PNG fake")
    report = make_report(run_dir, fineweb_edu)
    model_card.write_model_card(folder, report, "someone/gpt2-repro", run_dir)
    return folder


class FakeHub:
    """HfApi's network calls, recorded: what would have been created and committed."""

    def __init__(self, monkeypatch, private_on_hub=None):
        self.repos, self.commits = [], []
        hub = self

        def create_repo(api, repo_id, **kwargs):
            hub.repos.append((repo_id, kwargs))
            return f"https://huggingface.co/{repo_id}"

        def repo_info(api, repo_id, **kwargs):
            private = hub.repos[-1][1].get("private") if private_on_hub is None else private_on_hub
            return type("RepoInfo", (), {"private": private})()

        def create_commit(api, repo_id, operations, **kwargs):
            hub.commits.append((repo_id, list(operations), kwargs))

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "repo_info", repo_info)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)


# ---- the card ----


def test_card_metadata_round_trips_through_modelcard_load(checkpoint):
    card = ModelCard.load(checkpoint / "README.md")
    data = card.data
    assert (data.license, data.library_name, data.pipeline_tag, data.language) == (
        "mit", "transformers", "text-generation", "en")
    assert data.datasets == ["HuggingFaceFW/fineweb-edu"]
    assert {"gpt2", "gpt2repro"} <= set(data.tags)
    assert data.model_name == "someone/gpt2-repro"
    values = {(r.dataset_type, r.metric_type, r.metric_config): r.metric_value for r in data.eval_results}
    assert values == {
        ("Rowan/hellaswag", "acc_norm", "completion"): 31.23,
        ("Rowan/hellaswag", "acc_norm", "lm_eval"): 33.01,
        ("HuggingFaceFW/fineweb-edu", "loss", None): 3.05,
        ("HuggingFaceFW/fineweb-edu", "bits_per_byte", None): 0.93,
    }
    assert all(r.dataset_split == "validation" for r in data.eval_results if r.dataset_type == "Rowan/hellaswag")


def test_card_body_compares_with_gpt2_and_shows_curves_command_and_report(checkpoint):
    text = ModelCard.load(checkpoint / "README.md").text
    assert "| HellaSwag acc_norm, completion style | 31.23 | 29.55 |" in text
    assert "3.2924 (OpenAI GPT-2 124M on FineWeb-Edu val" in text
    assert "![training curves](curves.png)" in text and (checkpoint / "curves.png").exists()
    assert "python train.py --preset gpt2-124m" in text
    example = 'name = "someone/gpt2-repro"\nmodel = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=True)'
    assert example in text
    assert (checkpoint / "report.md").exists() and (checkpoint / "report.json").exists()
    assert "github.com" not in text and "](http" not in text  # no placeholder links


def test_a_card_of_local_data_names_no_hub_dataset_and_a_partial_run_says_so(tmp_path, data_dir):
    report = make_report(tmp_path, data_dir, hellaswag_items=50)
    report["training"]["steps"] = 100
    card = model_card.build_model_card(report)
    assert card.data.datasets is None
    splits = {r.dataset_split for r in card.data.eval_results if r.dataset_type == "Rowan/hellaswag"}
    assert splits == {"validation[:50]"}  # a subset of HellaSwag is its own evaluation
    assert "from step 100 of 19,073: training had not finished" in card.text
    assert "No published GPT-2 validation loss exists for this data" in card.text


def test_the_card_and_report_of_a_run_from_openai_gpt2_name_and_link_its_base_model(tmp_path, data_dir):
    facts = dict(command=["train.py", "--init-from", "gpt2"], preset="tiny", world_size=1, device_type="cpu", steps=10,
                 tokens=40_960, n_params=124_439_808, settings=dict(model="gpt2-124m", init_from="gpt2",
                                                                   data_dir=str(data_dir), max_steps=10),
                 final_eval=dict(val_loss=3.5))
    report = reporting.write_report(tmp_path, facts)
    assert report["base_model"] == {"name": "gpt2", "hub_id": "openai-community/gpt2"}
    assert "- started from the weights of `openai-community/gpt2` (--init-from)" in (tmp_path / "report.md").read_text()
    card = ModelCard(str(model_card.build_model_card(report, REPO_ID)))  # as the Hub parses it
    assert card.data.base_model == "openai-community/gpt2" and "pretrained-from-scratch" not in card.data.tags
    assert card.text.splitlines()[2].startswith("GPT-2 trained on from `openai-community/gpt2` with gpt2repro's")


def test_added_eval_results_replace_what_they_measure_again_and_keep_the_rest(checkpoint, fineweb_edu):
    card = ModelCard.load(checkpoint / "README.md")
    before = len(card.data.eval_results)
    summary = dict(hellaswag_items=10_042, hellaswag_completion_acc=0.3, hellaswag_completion_acc_norm=0.35,
                   hellaswag_lm_eval_acc=0.3, hellaswag_lm_eval_acc_norm=0.36,
                   device="cuda", dtype="float32")
    data = reporting.describe_data(fineweb_edu)
    for _ in range(2):  # a second push of the same results duplicates nothing
        card = model_card.add_eval_results(card, summary, "someone/gpt2-repro", data)
    card = ModelCard(str(card))  # as the Hub will parse it
    values = {(r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}
    assert len(card.data.eval_results) == before
    assert values[("acc_norm", "completion")] == 35.0 and values[("acc_norm", "lm_eval")] == 36.0
    assert values[("loss", None)] == 3.05  # not measured again: kept
    # a validation loss on another number of tokens is another evaluation: added beside the first
    card = model_card.add_eval_results(card, dict(summary, val_loss=3.1, val_tokens=1000), "someone/gpt2-repro", data)
    assert sorted(r.metric_value for r in card.data.eval_results if r.metric_type == "loss") == [3.05, 3.1]
    assert card.text.count("## Evaluation (eval_hellaswag.py)") == 1


def test_the_card_of_an_unpushed_tiny_run_tells_the_truth(tmp_path, data_dir, tiny_config):
    from modeling_gpt2repro import GPT2ReproForCausalLM

    run_dir, folder = tmp_path / "runs" / "tiny", tmp_path / "runs" / "tiny" / "final"
    GPT2ReproForCausalLM(tiny_config).save_pretrained(folder)  # config.json: n_positions 64
    facts = dict(command=["train.py"], preset="tiny", world_size=1, device_type="cpu", steps=150, tokens=614_400,
                 n_params=7_000_000, settings=dict(model="tiny", data_dir=str(data_dir), max_steps=150, seq_len=32,
                                                   hellaswag="off"),
                 final_eval=dict(val_loss=5.7, val_bpb=2.3, val_tokens=2048))
    model_card.write_model_card(folder, reporting.write_report(run_dir, facts), None, run_dir)
    card = ModelCard.load(folder / "README.md")
    assert card.data.model_name == "gpt2repro-tiny" and str(tmp_path) not in card.content
    assert f'name = "{model_card.PLACEHOLDER_REPO}"' in card.text and "the path of this folder" in card.text
    assert "Context length: 64 tokens (trained on sequences of 32)." in card.text
    assert "fluent" not in card.text and "7.0M-parameter model at validation loss 5.70" in card.text
    assert "both are reported" not in card.text and "HellaSwag was not evaluated" in card.text
    assert "| HellaSwag" not in card.text  # no rows of n/a
    # HellaSwag from a local 12-item file: labelled as that file, not as Rowan/hellaswag
    facts["settings"]["hellaswag"] = "/somewhere/hellaswag_tiny.jsonl"
    facts["final_eval"].update(hellaswag_items=12, hellaswag_completion_acc=0.25, hellaswag_completion_acc_norm=0.25,
                               hellaswag_lm_eval_acc=0.3, hellaswag_lm_eval_acc_norm=0.3)
    card = model_card.build_model_card(reporting.write_report(run_dir, facts))
    hellaswag = [r for r in card.data.eval_results if r.metric_type == "acc_norm"]
    assert {(r.dataset_type, r.dataset_split) for r in hellaswag} == {("hellaswag_tiny.jsonl", "12 items")}
    assert "Rowan/hellaswag" not in card.content and "/somewhere" not in card.content
    assert "| HellaSwag acc_norm, completion style [12 items] (local file hellaswag_tiny.jsonl) | 25.00 |" in card.text
    assert "do not compare with GPT-2's" in card.text


# ---- the upload ----


@pytest.fixture
def online(hub, monkeypatch):
    """The stand-in Hub, reachable: huggingface_hub out of the offline mode conftest sets."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return hub


def test_a_push_puts_native_gpt2_on_main_and_our_checkpoint_on_its_branch(checkpoint, online):
    model_card.push_to_hub(checkpoint, REPO_ID, private=True)
    main, branch = online.files(REPO_ID), online.files(REPO_ID, model_card.GPT2REPRO_BRANCH)
    assert sorted(main) == NATIVE_FILES and sorted(branch) == USER_FILES  # never training_state/
    assert online.settings(REPO_ID)["private"]
    config = json.loads(main["config.json"].read_text())
    assert (config["model_type"], config["architectures"], config["vocab_size"]) == ("gpt2", ["GPT2LMHeadModel"], 50257)
    assert config["n_ctx"] == config["n_positions"] == 64 and "auto_map" not in config  # n_ctx: llama.cpp reads it
    assert json.loads(main["tokenizer_config.json"].read_text())["model_max_length"] == 64
    assert json.loads(branch["config.json"].read_text())["model_type"] == "gpt2repro"
    assert branch["model.safetensors"].read_bytes() == (checkpoint / "model.safetensors").read_bytes()

    card = ModelCard.load(main["README.md"])
    assert (card.data.library_name, card.data.pipeline_tag, card.data.license) == ("transformers", "text-generation",
                                                                                   "mit")
    assert card.data.datasets == ["HuggingFaceFW/fineweb-edu"] and "gpt2" in card.data.tags
    assert card.data.eval_results  # the model-index of the run
    assert f'name = "{REPO_ID}"\nmodel = AutoModelForCausalLM.from_pretrained(name)\n' in card.text
    pinned = online.revision(REPO_ID, model_card.GPT2REPRO_BRANCH)
    assert f'from_pretrained("{REPO_ID}", revision="{pinned}", trust_remote_code=True)' in card.text
    assert "![training curves](curves.png)" in card.text
    # the branch's own card loads the branch
    assert 'from_pretrained(name, revision="gpt2repro", trust_remote_code=True)' in branch["README.md"].read_text()


def test_pushed_main_loads_with_no_remote_code_and_greedy_tokens_equal_ours(checkpoint, online):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel, pipeline

    from modeling_gpt2repro import GPT2ReproForCausalLM

    ours = GPT2ReproForCausalLM.from_pretrained(checkpoint).eval()
    model_card.push_to_hub(checkpoint, REPO_ID)
    tokenizer = AutoTokenizer.from_pretrained(REPO_ID)
    ids = tokenizer(SAMPLE_PROMPT, return_tensors="pt").input_ids
    expected = ours.generate(ids, max_new_tokens=8, do_sample=False)
    native = AutoModelForCausalLM.from_pretrained(REPO_ID)  # no trust_remote_code
    assert type(native) is GPT2LMHeadModel and native.lm_head.weight is native.transformer.wte.weight
    assert torch.equal(native.generate(ids, max_new_tokens=8, do_sample=False), expected)
    generator = pipeline("text-generation", model=REPO_ID)
    text = generator(SAMPLE_PROMPT, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text == tokenizer.decode(expected[0])
    # the branch, at the commit the card pins
    pinned = online.revision(REPO_ID, model_card.GPT2REPRO_BRANCH)
    branch = AutoModelForCausalLM.from_pretrained(REPO_ID, revision=pinned, trust_remote_code=True).eval()
    assert torch.equal(branch.generate(ids, max_new_tokens=8, do_sample=False), expected)


@pytest.mark.slow
def test_the_branch_loads_with_its_own_remote_code_where_gpt2repro_is_not_installed(checkpoint, hub, tmp_path):
    model_card.push_to_hub(checkpoint, REPO_ID)
    pinned = hub.revision(REPO_ID, model_card.GPT2REPRO_BRANCH)
    script = textwrap.dedent(f"""
        import sys
        from transformers import AutoModelForCausalLM
        assert "modeling_gpt2repro" not in sys.modules
        model = AutoModelForCausalLM.from_pretrained({REPO_ID!r}, revision={pinned!r}, trust_remote_code=True)
        print(type(model).__module__, type(model).__name__)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"),
           "GPT2REPRO_STAND_IN_HUB": str(hub.root), "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "stand_in_hub_site"), str(REPO)])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    module, name = result.stdout.split()[-2:]
    assert module.startswith("transformers_modules.") and name == "GPT2ReproForCausalLM"


@pytest.mark.parametrize("hub_format", ["native", "gpt2repro"])
def test_a_flag_pushes_one_format_alone_onto_main_replacing_the_other(checkpoint, online, hub_format):
    other = "gpt2repro" if hub_format == "native" else "native"
    model_card.push_to_hub(checkpoint, REPO_ID, hub_format=other)
    model_card.push_to_hub(checkpoint, REPO_ID, hub_format=hub_format)
    assert online.branches(REPO_ID) == ["main"]
    main = online.files(REPO_ID)
    assert sorted(main) == (NATIVE_FILES if hub_format == "native" else USER_FILES)  # the other's model code gone
    text = ModelCard.load(main["README.md"]).text
    assert ("trust_remote_code" in text) == (hub_format == "gpt2repro") and "revision=" not in text


def test_a_private_push_to_an_existing_public_repo_uploads_nothing(checkpoint, monkeypatch):
    hub = FakeHub(monkeypatch, private_on_hub=False)
    with pytest.raises(model_card.PublishError, match="exists and is public: nothing was uploaded"):
        model_card.push_to_hub(checkpoint, "someone/gpt2-repro", private=True)
    assert hub.commits == []


def test_a_folder_without_weights_is_refused_before_the_hub(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch)
    (tmp_path / "README.md").write_text("hi")
    with pytest.raises(model_card.PublishError, match="is not a checkpoint"):
        model_card.push_to_hub(tmp_path, "someone/x")
    assert hub.repos == [] and hub.commits == []


def test_a_missing_folder_is_refused_in_one_line_before_the_hub(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch)
    with pytest.raises(model_card.PublishError) as error:
        model_card.push_to_hub(tmp_path / "DOES_NOT_EXIST", "someone/x")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'DOES_NOT_EXIST'}: no such directory; push a folder that train.py wrote")
    assert "\n" not in message and hub.repos == [] and hub.commits == []


@pytest.mark.parametrize("hub_format", ["both", "gpt2repro"])
def test_a_plain_gpt2_folder_is_refused_in_one_line_before_the_hub(tmp_path, monkeypatch, hub_format):
    from transformers import GPT2Config, GPT2LMHeadModel

    hub = FakeHub(monkeypatch)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=16)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(model_card.PublishError) as error:
        model_card.push_to_hub(tmp_path / "gpt2", "someone/x", hub_format=hub_format)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'gpt2'} holds a 'gpt2' model, not a gpt2repro checkpoint")
    assert "\n" not in message and hub.repos == [] and hub.commits == []


def test_push_offline_is_one_line_naming_a_retry_without_training_state(checkpoint):
    # conftest sets HF_HUB_OFFLINE=1: the Hub is unreachable, as on a machine without internet
    with pytest.raises(model_card.PublishError) as error:
        model_card.push_to_hub(checkpoint, "someone/gpt2-repro", private=True)
    message = str(error.value)
    assert message.startswith(f"could not push {checkpoint} to someone/gpt2-repro") and "\n" not in message
    assert f"checkpoint is intact: retry with `python convert_gpt2.py push {checkpoint} someone/gpt2-repro --private`" \
        in message


def test_eval_hellaswag_push_results_adds_to_the_hub_card_and_uploads_only_readme(checkpoint, tmp_path, monkeypatch,
                                                                                    tiny_config):
    import eval_hellaswag as ev
    from modeling_gpt2repro import GPT2ReproForCausalLM
    from gpt2repro.tokenizer import load_tokenizer

    downloads = []

    def hf_hub_download(repo_id, filename, **kwargs):  # the card as the Hub holds it
        downloads.append((repo_id, filename))
        return str(checkpoint / "README.md")

    monkeypatch.setattr(huggingface_hub.repocard, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(ev, "load_model", lambda name, device, dtype: (GPT2ReproForCausalLM(tiny_config).eval(),
                                                                       load_tokenizer()))
    hub = FakeHub(monkeypatch)
    output = tmp_path / "results.json"
    monkeypatch.setattr(sys, "argv", ["eval_hellaswag.py", "--model", "ours", "--data", str(FIXTURE), "--limit", "4",
                                      "--output", str(output), "--push-results", "someone/gpt2-repro"])
    ev.main()

    assert downloads == [("someone/gpt2-repro", "README.md")]
    [(repo_id, [operation], kwargs)] = hub.commits
    assert (repo_id, operation.path_in_repo) == ("someone/gpt2-repro", "README.md")
    card = ModelCard(operation.path_or_fileobj.decode())
    summary = json.loads(output.read_text())["models"]["ours"]["summary"]
    values = {(r.dataset_type, r.dataset_split, r.metric_config): r.metric_value for r in card.data.eval_results
              if r.metric_type == "acc_norm"}
    assert values == {  # the training run's, kept; then 4 items of a local file, labelled as that file
        ("Rowan/hellaswag", "validation", "completion"): 31.23, ("Rowan/hellaswag", "validation", "lm_eval"): 33.01,
        ("hellaswag_tiny.jsonl", "4 items", "completion"): round(100 * summary["hellaswag_completion_acc_norm"], 2),
        ("hellaswag_tiny.jsonl", "4 items", "lm_eval"): round(100 * summary["hellaswag_lm_eval_acc_norm"], 2),
    }
    row = f"| HellaSwag acc, completion style [4 items] | {100 * summary['hellaswag_completion_acc']:.2f} | 28.59 |"
    assert "## Evaluation (eval_hellaswag.py)" in card.text and row in card.text


def test_pushed_results_land_on_the_card_of_main_which_keeps_both_formats(checkpoint, online, monkeypatch, tiny_config):
    import eval_hellaswag as ev
    from modeling_gpt2repro import GPT2ReproForCausalLM
    from gpt2repro.tokenizer import load_tokenizer

    model_card.push_to_hub(checkpoint, REPO_ID)
    branch_card = online.files(REPO_ID, model_card.GPT2REPRO_BRANCH)["README.md"].read_text()
    monkeypatch.setattr(ev, "load_model", lambda name, device, dtype: (GPT2ReproForCausalLM(tiny_config).eval(),
                                                                       load_tokenizer()))
    ev.main(["--model", "ours", "--data", str(FIXTURE), "--limit", "4", "--push-results", REPO_ID])
    card = ModelCard.load(online.files(REPO_ID)["README.md"])
    assert "## Evaluation (eval_hellaswag.py)" in card.text
    assert {r.dataset_split for r in card.data.eval_results if r.metric_type == "acc_norm"} >= {"4 items"}
    assert "model = AutoModelForCausalLM.from_pretrained(name)\n" in card.text and "trust_remote_code=True" in card.text
    assert online.files(REPO_ID, model_card.GPT2REPRO_BRANCH)["README.md"].read_text() == branch_card


def test_eval_output_records_provenance(checkpoint, tmp_path, monkeypatch, tiny_config):
    import eval_hellaswag as ev
    from modeling_gpt2repro import GPT2ReproForCausalLM
    from gpt2repro.tokenizer import load_tokenizer

    monkeypatch.setattr(ev, "load_model", lambda name, device, dtype: (GPT2ReproForCausalLM(tiny_config).eval(),
                                                                       load_tokenizer()))
    output = tmp_path / "results.json"
    monkeypatch.setattr(sys, "argv", ["eval_hellaswag.py", "--model", "ours", "--data", str(FIXTURE), "--limit", "2",
                                      "--output", str(output)])
    ev.main()
    provenance = json.loads(output.read_text())["provenance"]
    assert provenance["code"] == git_state() and provenance["versions"]["torch"]
    assert not list(tmp_path.glob("*.tmp"))


def test_push_results_to_an_unreachable_repo_fails_before_scoring(monkeypatch, capsys):
    import eval_hellaswag as ev

    monkeypatch.setattr(ev, "load_model", lambda *a: pytest.fail("a model was loaded before the card"))
    monkeypatch.setattr(sys, "argv", ["eval_hellaswag.py", "--model", "ours", "--data", str(FIXTURE),
                                      "--push-results", "someone/gpt2-repro"])
    with pytest.raises(SystemExit) as error:  # HF_HUB_OFFLINE=1 (conftest)
        ev.main()
    message = str(error.value)
    assert message.startswith("error: could not read the model card of someone/gpt2-repro") and "\n" not in message


# ---- trackers ----


def numeric_metrics(run_dir) -> dict:
    """{key: {step: value}} of every number metrics.jsonl holds."""
    found = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                found.setdefault(key, {})[row["step"]] = value
    return found


def assert_same_metrics(logged: dict, expected: dict):
    assert set(logged) == set(expected)
    for key in expected:
        assert logged[key].keys() == expected[key].keys(), key
        for step, value in expected[key].items():
            assert math.isclose(logged[key][step], value, rel_tol=1e-6), (key, step)  # TensorBoard keeps float32


@pytest.mark.slow
def test_tensorboard_events_hold_exactly_the_scalars_of_metrics_jsonl(data_dir, tmp_path, no_peak_probe):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_in_process("--data-dir", data_dir, "--run-dir", tmp_path, "--max-steps", 2, "--micro-batch-size", 4,
                   "--total-batch-tokens", 4 * SEQ, "--sample-tokens", 4,
                   "--hellaswag", FIXTURE, "--hellaswag-limit", 4, "--log-with", "tensorboard")
    logged = {}
    for events in tmp_path.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            logged.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    expected = numeric_metrics(tmp_path)
    assert {"loss", "lr", "val_loss", "hellaswag_completion_acc_norm"} <= set(expected)
    assert_same_metrics(logged, expected)


@pytest.mark.slow
def test_trackio_logs_offline_exactly_the_scalars_of_metrics_jsonl(data_dir, tmp_path, no_peak_probe):
    from trackio.sqlite_storage import SQLiteStorage  # its database lives in conftest's TRACKIO_DIR

    before = set(SQLiteStorage.get_runs("gpt2repro"))
    run_in_process("--data-dir", data_dir, "--run-dir", tmp_path, "--max-steps", 1, "--micro-batch-size", 4,
                   "--total-batch-tokens", 4 * SEQ, "--sample-tokens", 4, "--log-with", "trackio")
    [run] = set(SQLiteStorage.get_runs("gpt2repro")) - before
    logged = {}
    for row in SQLiteStorage.get_logs("gpt2repro", run):
        for key, value in row.items():
            if key not in ("step", "timestamp"):
                logged.setdefault(key, {})[row["step"]] = value
    expected = numeric_metrics(tmp_path)
    assert "val_loss" in expected
    assert_same_metrics(logged, expected)


# ---- --push-to-hub, checked before training ----


@pytest.mark.parametrize("me, repo_private, private, message", [
    (None, None, False, "cannot check the Hugging Face login"),
    ({"name": "me", "auth": {"accessToken": {"role": "read"}}}, None, False, "is read-only"),
    ({"name": "me", "orgs": [{"name": "lab"}]}, None, False, "me cannot write to someone"),
    ({"name": "someone"}, False, True, "the repo exists and is public"),
])
def test_push_access_is_refused_up_front_in_one_line(monkeypatch, me, repo_private, private, message):
    def whoami(api):
        if me is None:
            raise OSError("offline")
        return me

    monkeypatch.setattr(HfApi, "whoami", whoami)
    monkeypatch.setattr(HfApi, "repo_info", lambda api, repo_id: type("Info", (), {"private": repo_private})())
    with pytest.raises(model_card.PublishError) as error:
        model_card.check_push_access("someone/gpt2-repro", private=private)
    assert str(error.value).startswith("--push-to-hub someone/gpt2-repro: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_push_access_granted_says_where_the_checkpoint_will_go(monkeypatch):
    monkeypatch.setattr(HfApi, "whoami", lambda api: {"name": "me", "orgs": [{"name": "lab"}]})

    def repo_info(api, repo_id):
        raise OSError("404")  # not created yet

    monkeypatch.setattr(HfApi, "repo_info", repo_info)
    line = model_card.check_push_access("lab/gpt2-repro", private=True)
    assert line == "push: logged in as me; final/ goes to https://huggingface.co/lab/gpt2-repro (private) at the end"


def test_train_refuses_a_push_it_cannot_make_before_the_first_step(data_dir, tmp_path, capsys):
    import train
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(SystemExit) as error:  # conftest sets HF_HUB_OFFLINE=1: no login can be checked
        train.run(["--data-dir", str(data_dir), "--run-dir", str(tmp_path), "--max-steps", "1", "--log-with", "none",
                   "--push-to-hub", "someone/gpt2-repro"])
    assert str(error.value).startswith("error: --push-to-hub someone/gpt2-repro: cannot check the Hugging Face login")
    assert "step " not in capsys.readouterr().out and not list(tmp_path.iterdir())


def test_a_malformed_repo_id_is_refused_by_huggingface_hubs_validator_in_one_short_line_before_any_work(
    data_dir, tmp_path, monkeypatch
):
    import convert_gpt2
    import eval_hellaswag
    import prepare_data
    import train
    from accelerate.state import AcceleratorState

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the id is checked before the network
    monkeypatch.setattr(HfApi, "whoami", lambda api: pytest.fail("checked the login of a malformed id"))
    monkeypatch.setattr(ModelCard, "load", lambda *a, **k: pytest.fail("read a card of a malformed id"))
    rule = "is not a Hub repo id: Repo id must use alphanumeric chars"
    commands = [
        (train.run, ["--data-dir", str(data_dir), "--run-dir", str(tmp_path / "run"), "--max-steps", "1",
                     "--log-with", "none", "--push-to-hub", "not a repo id!!"], f"--push-to-hub 'not a repo id!!' {rule}"),
        (prepare_data.main, ["--out", str(tmp_path / "data"), "--push-to-hub", "not a repo id!!"],
         f"--push-to-hub 'not a repo id!!' {rule}"),
        (prepare_data.main, ["--out", str(tmp_path / "data"), "--from-hub", "a/b/c"],
         "--from-hub 'a/b/c' is not a Hub repo id: Repo id must be in the form 'repo_name' or 'namespace/repo_name'"),
        (eval_hellaswag.main, ["--model", str(tmp_path), "--data", str(FIXTURE), "--push-results", "me/x--y"],
         "--push-results 'me/x--y' is not a Hub repo id: Cannot have -- or .. in repo_id"),
        (convert_gpt2.main, ["from-gpt2", "not a repo id!!", str(tmp_path / "out")],
         "not a repo id!!: no such directory, and not a Hub repo id (Repo id must use alphanumeric chars"),
        (convert_gpt2.main, ["push", str(tmp_path), "not a repo id!!"], f"push REPO 'not a repo id!!' {rule}"),
    ]
    for command, argv, expected in commands:
        AcceleratorState._reset_state(reset_partial_state=True)
        with pytest.raises(SystemExit) as error:
            command(argv)
        message = str(error.value)
        assert message.startswith(f"error: {expected}") and "\n" not in message and len(message) < 200, message
    assert not list(tmp_path.iterdir())  # nothing prepared, trained or converted
