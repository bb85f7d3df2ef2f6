"""eval_hellaswag: data, both HellaSwag conventions, batching, sharding, validation loss, CLI."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, launcher
from transformers import GPT2Config, GPT2LMHeadModel

import eval_hellaswag as ev
from modeling_gpt2repro import GPT2ReproForCausalLM
from gpt2repro import hellaswag, hub
from gpt2repro import validation
from gpt2repro.token_shards import write_shard
from gpt2repro.tokenizer import load_tokenizer

FIXTURE = REPO / "tests" / "fixtures" / "hellaswag_tiny.jsonl"
LOGLIK_KEYS = ("completion_loglik", "lm_eval_loglik")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models run as fast on one thread, and a second thread competing with other jobs for a
    # shared 2-core runner slows small ops down many times over.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def items():
    return hellaswag.load_hellaswag(FIXTURE)


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    # A wide init makes log-probabilities vary by several nats between tokens, so a score taken at
    # the wrong position or from the wrong row is far off, not within rounding of the right one.
    config = GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=128, initializer_range=0.3)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def scores(gpt2, tokenizer, items):
    return hellaswag.score_hellaswag(gpt2, tokenizer, items, batch_size=16)


def logliks(result):
    return {key: np.array([item[key] for item in result["per_item"]]) for key in LOGLIK_KEYS}


def assert_same_scores(result, expected):
    for key in LOGLIK_KEYS:
        np.testing.assert_allclose(logliks(result)[key], logliks(expected)[key], rtol=0, atol=1e-4, err_msg=key)
    for metric in hellaswag.HELLASWAG_METRICS:
        assert result[metric.name] == expected[metric.name], metric.name


# ---- data ----


def test_fixture_has_both_sources(items):
    assert len(items) == 12
    assert sum(item["ctx_a"].startswith("[header]") for item in items) == 6  # WikiHow
    assert {item["label"] for item in items} == {0, 1, 2, 3}


def test_malformed_jsonl_items_are_reported_by_line(tmp_path):
    good = FIXTURE.read_text().splitlines()[0]
    row = json.loads(good)
    lines = [
        good,
        "{not json",
        json.dumps({k: v for k, v in row.items() if k != "endings"}),
        json.dumps({**row, "label": 5}),
        "",
        json.dumps({**row, "endings": row["endings"][:3]}),
        good,
        json.dumps({**row, "label": ""}),
        json.dumps({**row, "endings": ["[substeps]", "b", "c", "d"]}),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(hellaswag.HellaSwagDataError) as error:
        hellaswag.load_hellaswag(path)
    message = str(error.value)
    assert "6 malformed" in message
    for expected in (
        "line 2: not valid JSON",
        "line 3: missing field(s): endings",
        "line 4: label 5 is not 0, 1, 2 or 3",
        "line 6: endings must be a list of 4",
        "line 8: label '' is not",
        "line 9: an ending is empty",
    ):
        assert expected in message
    assert "line 1:" not in message and "line 7:" not in message
    assert len(hellaswag.load_hellaswag(path, limit=1)) == 1  # the limit stops before the bad lines


def test_parquet_in_hub_format_loads_like_jsonl(tmp_path, items):
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    for row in rows:
        row["label"] = str(row["label"])  # Rowan/hellaswag stores labels as strings
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "validation.parquet")
    assert hellaswag.load_hellaswag(tmp_path / "validation.parquet") == items

    rows[1]["label"] = "4"
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    with pytest.raises(hellaswag.HellaSwagDataError, match="row 2: label '4'"):
        hellaswag.load_hellaswag(tmp_path / "bad.parquet")


def test_default_data_is_downloaded_once_into_the_cache(tmp_path, monkeypatch, items):
    source = tmp_path / "served.jsonl"
    source.write_bytes(FIXTURE.read_bytes())
    monkeypatch.setenv("GPT2REPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hellaswag, "HELLASWAG_VAL_URL", source.as_uri())
    monkeypatch.setattr(hellaswag, "HELLASWAG_VAL_ITEMS", 12)
    assert hellaswag.load_hellaswag() == items
    source.unlink()  # a second load must not fetch again
    assert hellaswag.load_hellaswag(limit=3) == items[:3]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["hellaswag_val.jsonl"]


def test_truncated_or_failed_download_leaves_no_cache(tmp_path, monkeypatch):
    source = tmp_path / "served.jsonl"
    source.write_bytes(FIXTURE.read_bytes())
    monkeypatch.setenv("GPT2REPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hellaswag, "HELLASWAG_VAL_URL", source.as_uri())  # 12 items, 10,042 expected
    with pytest.raises(hellaswag.HellaSwagDataError, match="expected 10042"):
        hellaswag.load_hellaswag()
    monkeypatch.setattr(hellaswag, "HELLASWAG_VAL_URL", "http://127.0.0.1:9/hellaswag_val.jsonl")  # nothing listens
    with pytest.raises(hellaswag.HellaSwagDataError) as error:
        hellaswag.load_hellaswag()
    assert "\n" not in str(error.value) and "--data hellaswag_val.jsonl" in str(error.value)
    assert list((tmp_path / "cache").iterdir()) == []


# ---- the two conventions, hand-computed ----


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        # strip happens before the tags go, so a removed leading tag leaves its space
        ("  [header] How to x [title] Do y. [step] Z  ", " How to x. Do y. Z"),
        ("Iron it. [title] Wear it.", "Iron it.. Wear it."),
        # one pass of the double-space fix: three spaces become two
        ("paper. [step] [substeps] Cut it.", "paper.  Cut it."),
        ("no tags here", "no tags here"),
    ],
)
def test_lm_eval_preprocess(raw, cleaned):
    assert hellaswag.lm_eval_preprocess(raw) == cleaned


def test_lm_eval_queries_and_choices(items):
    by_ind = {item["ind"]: item for item in items}
    query, choices = hellaswag.lm_eval_query_and_choices(by_ind[9002])
    assert query == "Playing badminton: Two players stand on either side of a net in a gym. The man in the red shirt"
    query, choices = hellaswag.lm_eval_query_and_choices(by_ind[9004])  # empty ctx_b; an ending with a trailing space
    assert query == "Tug of war: Two teams hold a long rope on a grassy field while a referee raises a flag."
    assert choices[0] == "The rope turns into a snake and the teams run away."
    query, choices = hellaswag.lm_eval_query_and_choices(by_ind[9103])
    assert query == (
        "Finance and Business: How to make a monthly budget. Gather your bank statements.  "
        "Collect the statements from the last three months."
    )
    assert choices[1] == "Burn the statements in the fireplace.. Spend whatever you like."
    query, _ = hellaswag.lm_eval_query_and_choices(by_ind[9102])  # the removed trailing [step] leaves a space
    assert query == "Home and Garden: How to fold a fitted sheet. Turn the sheet inside out. "


def test_token_ids_of_both_conventions(tokenizer, items):
    requests = hellaswag.encode_requests(tokenizer, items)
    k = [item["ind"] for item in items].index(9102)
    query, choices = hellaswag.lm_eval_query_and_choices(items[k])
    context, endings = requests["lm_eval"][0][k], requests["lm_eval"][1][k]
    # lm-eval moves the context's trailing space into the continuation
    assert tokenizer.decode(context) == query.rstrip()
    assert [tokenizer.decode(e) for e in endings] == ["  " + choice for choice in choices]
    assert requests["lm_eval_chars"][k] == [len(choice) for choice in choices] == [47, 45, 71, 79]
    # completion style: the raw ctx, and " " + raw ending tokenized on its own
    k = [item["ind"] for item in items].index(9003)
    assert requests["completion"][0][k] == tokenizer.encode(items[k]["ctx"])
    first_ending = requests["completion"][1][k][0]
    assert tokenizer.decode(first_ending) == " , the girl puts the tube in an oven and bakes it."


def test_accuracies_and_normalisations_by_hand():
    per_item = [
        # sums pick 0; per token (-5, -3, -2, -4) picks 2; per character (-2, -0.5, -3, -0.4) picks 3
        dict(label=2, completion_loglik=[-10, -12, -30, -40], completion_tokens=[2, 4, 15, 10],
             lm_eval_loglik=[-10, -12, -30, -40], lm_eval_chars=[5, 24, 10, 100]),
        dict(label=0, completion_loglik=[-1, -5, -6, -7], completion_tokens=[1, 1, 1, 1],
             lm_eval_loglik=[-1, -5, -6, -7], lm_eval_chars=[1, 1, 1, 1]),
    ]  # fmt: skip
    assert hellaswag.summarize(per_item) == {
        "hellaswag_items": 2, "hellaswag_completion_acc": 0.5, "hellaswag_completion_acc_norm": 1.0,
        "hellaswag_lm_eval_acc": 0.5, "hellaswag_lm_eval_acc_norm": 0.5,
    }  # fmt: skip


# ---- scoring ----


def naive_loglik(model, context, ending):
    """One full sequence, one forward, sum the ending's log-probabilities: the definition."""
    ids = torch.tensor([context + ending])
    with torch.no_grad():
        log_probs = F.log_softmax(model(ids).logits[0].double(), dim=-1)
    return sum(log_probs[len(context) - 1 + j, token].item() for j, token in enumerate(ending))


def test_scores_equal_a_naive_reference(gpt2, tokenizer, items, scores):
    for k in (0, 2, 7, 8):  # ActivityNet, ", then" endings, trailing-space query, triple space
        item, result = items[k], scores["per_item"][k]
        context = tokenizer.encode(item["ctx"])
        expected = [naive_loglik(gpt2, context, tokenizer.encode(" " + ending)) for ending in item["endings"]]
        np.testing.assert_allclose(result["completion_loglik"], expected, rtol=0, atol=1e-4)
        assert result["completion_tokens"] == [len(tokenizer.encode(" " + ending)) for ending in item["endings"]]

        query, choices = hellaswag.lm_eval_query_and_choices(item)
        context_text = query.rstrip()
        context = tokenizer.encode(context_text)
        expected = []
        for choice in choices:
            whole = tokenizer.encode(context_text + query[len(context_text) :] + " " + choice)
            expected.append(naive_loglik(gpt2, context, whole[len(context) :]))
        np.testing.assert_allclose(result["lm_eval_loglik"], expected, rtol=0, atol=1e-4)


def test_batched_equals_unbatched_and_padding_never_changes_a_score(gpt2, tokenizer, items):
    # Rotated endings keep each context (same group, same forward) but change every row's neighbours
    # and padding; each ending must keep its score wherever it sits.
    rotated = [{**item, "endings": item["endings"][1:] + item["endings"][:1], "label": 0} for item in items]
    one_by_one = hellaswag.score_hellaswag(gpt2, tokenizer, items + rotated, batch_size=1)
    batched = hellaswag.score_hellaswag(gpt2, tokenizer, items + rotated, batch_size=64)
    assert_same_scores(batched, one_by_one)
    for key in LOGLIK_KEYS:
        table = logliks(batched)[key]
        np.testing.assert_allclose(table[12:], np.roll(table[:12], -1, axis=1), rtol=0, atol=1e-4)


def test_our_model_from_the_same_weights_gives_the_same_numbers(gpt2, tokenizer, items, scores):
    ours = GPT2ReproForCausalLM.from_gpt2(gpt2).eval()
    assert_same_scores(hellaswag.score_hellaswag(ours, tokenizer, items, batch_size=5), scores)


def test_accelerator_path_and_refusals(gpt2, tokenizer, items, scores):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    try:
        assert_same_scores(hellaswag.score_hellaswag(gpt2, tokenizer, items, accelerator=Accelerator(cpu=True)), scores)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # later tests build their own Accelerator
    gpt2.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            hellaswag.score_hellaswag(gpt2, tokenizer, items[:1])
    finally:
        gpt2.eval()


# ---- validation loss (validation.py) in the distributed evaluation ----


@pytest.fixture
def val_dir(tmp_path):
    generator = np.random.default_rng(0)
    write_shard(tmp_path / "tiny_val_000000.bin", generator.integers(0, 50257, 300))
    write_shard(tmp_path / "tiny_val_000001.bin", generator.integers(0, 50257, 300))
    write_shard(tmp_path / "tiny_train_000001.bin", generator.integers(0, 50257, 300))  # never read
    return tmp_path


@pytest.mark.slow
def test_two_processes_shard_and_gather_to_the_single_process_numbers(tmp_path, gpt2, items, scores, val_dir):
    gpt2.save_pretrained(tmp_path / "model")
    script = tmp_path / "distributed_eval.py"
    script.write_text(f"""
import json, sys
sys.path.insert(0, {str(REPO)!r})
from accelerate import Accelerator
from transformers import GPT2LMHeadModel
from gpt2repro import hellaswag, validation
from gpt2repro.tokenizer import load_tokenizer

accelerator = Accelerator(cpu=True)
model = accelerator.prepare(GPT2LMHeadModel.from_pretrained({str(tmp_path / "model")!r}).eval())  # DDP-wrapped
items = hellaswag.load_hellaswag({str(FIXTURE)!r})
result = hellaswag.score_hellaswag(model, load_tokenizer(), items, batch_size=4, accelerator=accelerator)
result["val"] = validation.validation_loss(model, {str(val_dir)!r}, 500, seq_len=64, batch_size=2,
                                          accelerator=accelerator)
result["one_item"] = hellaswag.score_hellaswag(model, load_tokenizer(), items[:1], accelerator=accelerator)  # rank 1 idle
with open({str(tmp_path)!r} + f"/rank{{accelerator.process_index}}.json", "w") as f:
    json.dump(result, f)
""")
    command = [*launcher(), str(script)]  # torch elastic on 2 processes
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    expected_val = validation.validation_loss(gpt2, val_dir, 500, seq_len=64)
    first_item = {**hellaswag.summarize(scores["per_item"][:1]), "per_item": scores["per_item"][:1]}
    for rank in (0, 1):  # every rank returns the whole result
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert [item["ind"] for item in result["per_item"]] == [item["ind"] for item in items]
        assert_same_scores(result, scores)
        assert result["val"] == pytest.approx(expected_val, abs=1e-5)
        assert_same_scores(result["one_item"], first_item)


# ---- command line ----


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "cannot download HellaSwag"),  # offline without --data
        (["--data", "missing.jsonl"], "missing.jsonl: no such file"),
        (["--data", str(FIXTURE), "--val-data", "."], "no manifest.json"),
    ],
)
def test_cli_bad_inputs_are_one_line_errors_before_any_model_loads(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPT2REPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hellaswag, "HELLASWAG_VAL_URL", "http://127.0.0.1:9/hellaswag_val.jsonl")
    monkeypatch.setattr(sys, "argv", ["eval_hellaswag.py", "--model", "never-loaded", *args])
    with pytest.raises(SystemExit) as error:
        ev.main()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_hub_id_offline_is_a_one_line_error_that_says_how_to_work_offline():
    # conftest sets HF_HUB_OFFLINE=1: the Hub is unreachable, as on a machine without internet
    with pytest.raises(ev.ModelLoadError) as error:
        ev.load_model("gpt2", "cpu", torch.float32)
    message = str(error.value)
    assert "'gpt2'" in message and "HF_HUB_OFFLINE=1" in message and "local save_pretrained directory" in message
    assert "\n" not in message



def test_a_hub_id_where_the_hub_does_not_answer_fails_after_one_short_call(unreachable_hub):
    # one metadata call with the short timeout decides, not the download retries of most of a minute
    from gpt2repro.hub import HUB_TIMEOUT

    requests = unreachable_hub
    with pytest.raises(ev.ModelLoadError) as error:
        ev.load_model("openai-community/gpt2", "cpu", torch.float32)
    assert len(requests) == 1, [str(r.url) for r in requests]
    assert requests[0].extensions["timeout"]["connect"] == HUB_TIMEOUT
    message = str(error.value)
    assert message.startswith("cannot load model 'openai-community/gpt2'") and "\n" not in message


@pytest.mark.parametrize("status, headers, body", [
    (503, {}, "Service Unavailable"),
    (429, {}, "Too Many Requests"),
    (401, {"X-Error-Message": "Invalid credentials in Authorization header"}, "expired token"),
])
def test_a_hub_error_that_is_not_a_refusal_leaves_the_cached_copy_to_serve_the_model(monkeypatch, tmp_path, gpt2,
                                                                                   tokenizer, status, headers, body):
    import httpx2
    import huggingface_hub
    from huggingface_hub.utils import _http

    commit = "0" * 40  # the cache's layout: refs/main names the snapshot the files are in
    cache = tmp_path / "cache"
    snapshot = cache / "models--someone--tiny" / "snapshots" / commit
    gpt2.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (cache / "models--someone--tiny" / "refs").mkdir()
    (cache / "models--someone--tiny" / "refs" / "main").write_text(commit)
    requests = []

    def failing_hub(request):
        if not request.url.path.endswith("/api/agent-harnesses"):  # huggingface_hub's own, once a day (conftest)
            requests.append(request)
        return httpx2.Response(status, headers=headers, text=body, request=request)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(failing_hub)))
    try:
        model, _ = ev.load_model("someone/tiny", "cpu", torch.float32)
    finally:
        huggingface_hub.set_client_factory(_http.default_client_factory)
    assert len(requests) == 1, [str(r.url) for r in requests]  # the one metadata call; the cache serves the rest
    assert torch.equal(model.lm_head.weight, gpt2.lm_head.weight)


def test_a_hub_refusal_is_its_one_line_after_one_call(monkeypatch):
    import httpx2
    import huggingface_hub
    from huggingface_hub.utils import _http

    requests = []

    def no_such_repo(request):
        if not request.url.path.endswith("/api/agent-harnesses"):  # huggingface_hub's own, once a day (conftest)
            requests.append(request)
        return httpx2.Response(404, headers={"X-Error-Code": "RepoNotFound"}, request=request)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(no_such_repo)))
    try:
        with pytest.raises(ev.ModelLoadError) as error:
            ev.load_model("someone/tiny", "cpu", torch.float32)
    finally:
        huggingface_hub.set_client_factory(_http.default_client_factory)
    assert len(requests) == 1
    assert str(error.value) == ("cannot load model 'someone/tiny': no such model repository, or it is private (log in: "
                                "hf auth login)")


@pytest.mark.parametrize("name, expected", [
    ("runs/x/finl", "no such local directory, and not a Hub repo id (Repo id must be in the form"),
    ("not a repo id!!", "no such local directory, and not a Hub repo id (Repo id must use alphanumeric"),
])
def test_a_model_that_is_neither_a_directory_nor_a_repo_id_is_named_without_a_hub_call(monkeypatch, name,
                                                                                        expected):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "repo_info", lambda *a, **k: pytest.fail("asked the Hub"))
    with pytest.raises(ev.ModelLoadError, match=re.escape(f"cannot load model {name!r}: {expected}")):
        ev.load_model(name, "cpu", torch.float32)


def damaged_model_dir(path, gpt2, tokenizer, file, data: bytes | None = None):
    """A saved model directory whose `file` is cut in half, or replaced by `data`."""
    gpt2.save_pretrained(path)
    tokenizer.save_pretrained(path)
    original = (path / file).read_bytes()
    (path / file).write_bytes(original[: len(original) // 2] if data is None else data)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("file, part", [("model.safetensors", "model"), ("tokenizer.json", "tokenizer")])
def test_cli_truncated_model_files_are_a_one_line_error(tmp_path, gpt2, tokenizer, file, part):
    model_dir = damaged_model_dir(tmp_path / "model", gpt2, tokenizer, file)
    output = tmp_path / "results.json"
    command = [sys.executable, str(REPO / "eval_hellaswag.py"), "--model", str(model_dir), "--data", str(FIXTURE),
               "--limit", "2", "--output", str(output)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}  # as a user runs it: all warnings
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert run.returncode == 1
    assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1, run.stderr
    assert f"cannot load the {part} from {model_dir} (" in run.stderr and "are its files complete?" in run.stderr
    assert not output.exists()


@pytest.mark.parametrize(
    "file, data, reason",
    [
        ("model.safetensors", np.random.default_rng(0).bytes(5000), "SafetensorError"),
        ("tokenizer.json", b"{}", "KeyError: 'added_tokens'"),  # valid JSON, no tokenizer in it
        ("tokenizer.json", b"\xff\xfe garbage", "UnicodeDecodeError"),
    ],
)
def test_garbage_model_files_are_a_one_line_error(tmp_path, gpt2, tokenizer, file, data, reason):
    damaged_model_dir(tmp_path, gpt2, tokenizer, file, data)
    with pytest.raises(ev.ModelLoadError) as error:
        ev.load_model(str(tmp_path), "cpu", torch.float32)
    assert str(error.value).startswith(f"cannot load the {'model' if file.startswith('model') else 'tokenizer'}")
    assert reason in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, gpt2, tokenizer, items, scores, val_dir):
    official = tmp_path / "gpt2-like"
    gpt2.save_pretrained(official)
    tokenizer.save_pretrained(official)
    ours = tmp_path / "ours"  # our checkpoint format (auto_map + code), no tokenizer files: the fallback
    GPT2ReproForCausalLM.from_gpt2(gpt2).save_pretrained(ours)
    output = tmp_path / "results.json"
    command = [sys.executable, str(REPO / "eval_hellaswag.py"), "--model", str(official), "--model", str(ours),
               "--data", str(FIXTURE), "--limit", "8", "--batch-size", "3", "--output", str(output),
               "--val-data", str(val_dir), "--val-tokens", "200"]  # fmt: skip
    # remote code is copied under HF_HOME/modules; one thread as in this module
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert run.returncode == 0, run.stderr

    results = json.loads(output.read_text())
    expected = {**scores, "per_item": scores["per_item"][:8]}
    expected.update(hellaswag.summarize(expected["per_item"]))
    for name in (str(official), str(ours)):
        result = results["models"][name]
        assert result["summary"]["hellaswag_items"] == 8 and len(result["items"]) == 8
        assert [item["ind"] for item in result["items"]] == [item["ind"] for item in items[:8]]
        assert_same_scores({**result["summary"], "per_item": result["items"]}, expected)
        expected_val = validation.validation_loss(gpt2, val_dir, 200, 128)
        assert {k: result["summary"][k] for k in expected_val} == pytest.approx(expected_val, abs=1e-4)
    table = run.stdout.splitlines()
    assert table[0].split()[:3] == ["model", "items", "compl"] and len(table) >= 3
    assert "no tokenizer files in" in run.stderr


def test_a_weights_only_directory_gets_the_gpt2_tokenizer(tmp_path, gpt2):
    gpt2.save_pretrained(tmp_path)  # transformers would make an empty tokenizer for this directory
    model, tokenizer = ev.load_model(str(tmp_path), "cpu", torch.float32)
    assert len(tokenizer) == 50257 and tokenizer.encode("Hello world") == [15496, 995]
    assert not model.training


def test_a_model_that_fails_to_load_keeps_the_finished_models_results(tmp_path, gpt2, tokenizer, capsys):
    official = tmp_path / "gpt2-like"
    gpt2.save_pretrained(official)
    tokenizer.save_pretrained(official)
    output = tmp_path / "results.json"
    # gpt2 is a Hub id: offline (HF_HUB_OFFLINE=1, as conftest sets) it fails, after the local model was scored
    with pytest.raises(SystemExit) as error:
        ev.main(["--model", str(official), "--model", "gpt2", "--data", str(FIXTURE), "--limit", "2",
                 "--output", str(output)])
    message = str(error.value)
    assert message.startswith("error: cannot load model 'gpt2'") and "HF_HUB_OFFLINE=1" in message
    assert message.endswith(f"the results of {official} are above and in {output}") and "\n" not in message
    assert list(json.loads(output.read_text())["models"]) == [str(official)]
    assert str(official)[-32:] in capsys.readouterr().out  # the table of what finished


def test_a_hub_id_is_announced_with_the_way_to_work_offline(monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(ev, "load_model", lambda *a: (_ for _ in ()).throw(ev.ModelLoadError("no network")))
    with pytest.raises(SystemExit, match="^error: no network$"):
        ev.main(["--model", "gpt2", "--data", str(FIXTURE), "--limit", "1"])
    assert "note: gpt2 is not a local directory: loading it from the Hugging Face Hub (offline, set " \
           "HF_HUB_OFFLINE=1" in capsys.readouterr().err


def test_no_hellaswag_reports_validation_loss_alone(tmp_path, gpt2, tokenizer, val_dir, capsys):
    model_dir = tmp_path / "model"
    gpt2.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    output = tmp_path / "results.json"
    ev.main(["--model", str(model_dir), "--no-hellaswag", "--val-data", str(val_dir), "--val-tokens", "200",
             "--output", str(output)])
    summary = json.loads(output.read_text())["models"][str(model_dir)]["summary"]
    assert summary["val_loss"] == pytest.approx(validation.validation_loss(gpt2, val_dir, 200, 128)["val_loss"],
                                                abs=1e-4)
    assert "items" not in summary and "completion_acc" not in summary
    header = capsys.readouterr().out.splitlines()[0].split()
    assert header == ["model", "val", "loss", "val", "bpb"]
    with pytest.raises(SystemExit):  # nothing left to evaluate
        ev.main(["--model", str(model_dir), "--no-hellaswag"])
    assert "add --val-data DIR" in capsys.readouterr().err
