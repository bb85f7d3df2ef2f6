"""--optimizer muon and --lr-schedule wsd (gpt2repro/optim.py): torch's Muon step, the skip of a non-finite step,
the groups, the schedule, and every guarantee of a training run (resume, process counts, micro-batch auto, host
reads) with Muon."""

import copy
import json

import pytest
import torch
import yaml
from conftest import SEQ, assert_same_weights, launcher, logged, run_cli, run_in_process

from gpt2repro.optim import learning_rate, make_optimizer, param_groups, set_learning_rates, stable_until
from gpt2repro.settings import Settings

MUON = ["--optimizer", "muon", "--muon-lr", "3e-3"]


@pytest.fixture
def model(tiny_config):
    from modeling_gpt2repro import GPT2ReproForCausalLM

    return GPT2ReproForCausalLM(tiny_config)


def backward(model, seed=0):
    tokens = torch.randint(0, 50257, (2, 17), generator=torch.Generator().manual_seed(seed))
    model(input_ids=tokens[:, :-1], shift_labels=tokens[:, 1:]).loss.backward()


def muon_settings(**changes):
    return Settings(optimizer="muon", lr=3e-3, muon_lr=2e-2, **changes)


def state(optimizer):
    """The optimizer state as plain tensors, copied."""
    return copy.deepcopy({k: dict(v) for k, v in optimizer.state_dict()["state"].items()})


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].keys() == b[k].keys()
        for name in a[k]:
            assert torch.equal(torch.as_tensor(a[k][name]), torch.as_tensor(b[k][name])), (k, name)


# ---- the step ----


@pytest.mark.parametrize("adjust_lr_fn", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("found_inf", [None, 0.0])
def test_muon_steps_bit_for_bit_as_torch_s_muon_and_fused_adamw_side_by_side(model, adjust_lr_fn, found_inf):
    reference = copy.deepcopy(model)
    s = muon_settings()
    optimizer = make_optimizer(model, s, qkv_split=1, adjust_lr_fn=adjust_lr_fn)
    groups = param_groups(reference, s, qkv_split=1, adjust_lr_fn=adjust_lr_fn)
    matrices = [p for g in groups if g.get("muon") for p in g["params"]]
    muon = torch.optim.Muon(matrices, lr=2e-2, weight_decay=0.1, adjust_lr_fn=adjust_lr_fn)
    adamw = torch.optim.AdamW([g for g in groups if not g.get("muon")], lr=3e-3, betas=(0.9, 0.95), fused=True)
    for step in range(3):
        backward(model, step)
        backward(reference, step)
        optimizer.found_inf = None if found_inf is None else torch.tensor(found_inf)
        for opt in (optimizer, muon, adamw):
            opt.step()
            opt.zero_grad()
        for a, b in zip(model.parameters(), reference.parameters()):
            assert torch.equal(a, b)


def test_q_k_and_v_are_orthogonalized_as_three_matrices(model):
    s = muon_settings()
    optimizer = make_optimizer(model, s, adjust_lr_fn="match_rms_adamw")
    c_attn = model.transformer.h[0].attn.c_attn.weight
    apart = [torch.nn.Parameter(rows.detach().clone()) for rows in c_attn.chunk(3)]  # q, k, v
    muon = torch.optim.Muon(apart, lr=2e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for step in range(2):
        backward(model, step)
        for p, grad in zip(apart, c_attn.grad.chunk(3)):
            p.grad = grad.clone()
        optimizer.step()
        muon.step()
        optimizer.zero_grad()
        assert torch.equal(c_attn, torch.cat(apart))
    # one momentum buffer for the whole matrix: the checkpoint's layout does not depend on the split
    assert optimizer.state[c_attn]["momentum_buffer"].shape == c_attn.shape


def test_a_non_finite_step_leaves_weights_and_all_optimizer_state_bit_identical(model):
    optimizer = make_optimizer(model, muon_settings())
    for step in range(2):  # momentum buffers and AdamW moments that are not zero
        backward(model, step)
        optimizer.found_inf = torch.tensor(0.0)
        optimizer.step()
        optimizer.zero_grad()
    weights, before = [p.detach().clone() for p in model.parameters()], state(optimizer)
    backward(model, 2)
    model.transformer.h[0].mlp.c_fc.weight.grad[0, 0] = float("nan")  # a Muon matrix
    model.transformer.wte.weight.grad[1, 1] = float("inf")  # and an AdamW one
    optimizer.found_inf = torch.tensor(1.0)
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert_same_state(before, state(optimizer))


def test_the_muon_state_loads_into_a_new_optimizer_that_then_steps_as_the_original(model):
    twin = copy.deepcopy(model)
    optimizer = make_optimizer(model, muon_settings())
    backward(model)
    optimizer.step()
    optimizer.zero_grad()
    twin.load_state_dict(model.state_dict())
    loaded = make_optimizer(twin, muon_settings())
    loaded.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as read from disk: tensors of its own
    assert_same_state(state(optimizer), state(loaded))
    for m, opt in ((model, optimizer), (twin, loaded)):
        backward(m, 1)
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def test_muon_updates_the_blocks_matrices_and_adamw_everything_else_once(model):
    groups = make_optimizer(model, muon_settings()).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in groups if g["muon"] for p in g["params"]}
    rest = [names[id(p)] for g in groups if not g["muon"] for p in g["params"]]
    assert muon == {n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2}
    assert sorted(rest) == sorted(n for n in names.values() if n not in muon)  # the tied wte/lm_head once
    embeddings, vectors = (g for g in groups if not g["muon"])
    assert {names[id(p)] for p in embeddings["params"]} == {"transformer.wte.weight", "transformer.wpe.weight"}
    assert embeddings["weight_decay"] == 0.1 and vectors["weight_decay"] == 0.0


def test_muon_lr_follows_the_same_schedule_as_lr(model):
    s = muon_settings(warmup_steps=2, max_steps=10)
    optimizer = make_optimizer(model, s)
    # half-way through the warmup, then at the peak: --lr 3e-3 for AdamW's groups, --muon-lr 2e-2 for Muon's
    for step, adamw_lr, muon_lr in ((0, 1.5e-3, 1e-2), (1, 3e-3, 2e-2)):
        set_learning_rates(optimizer, learning_rate(step, s), s)
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(muon_lr if group["muon"] else adamw_lr)


# ---- the schedule ----


def test_wsd_warms_up_stays_flat_then_falls_linearly_to_min_lr():
    s = Settings(lr=1e-3, warmup_steps=10, max_steps=100, lr_schedule="wsd", cooldown_frac=0.2, min_lr_ratio=0.0)
    lrs = [learning_rate(step, s) for step in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert stable_until(s) == 80 and set(lrs[9:81]) == {1e-3}
    assert lrs[90] == pytest.approx(0.5e-3) and lrs[100] == pytest.approx(0.0)
    assert all(a > b for a, b in zip(lrs[80:], lrs[81:]))


def test_a_longer_wsd_run_has_the_same_rates_up_to_the_shorter_one_s_cooldown():
    """What makes a finished run extendable: from a checkpoint at or before stable_until, a larger --max-steps
    continues with the rates an uninterrupted longer run would have used."""
    short = Settings(max_steps=100, lr_schedule="wsd", cooldown_frac=0.2)
    longer = Settings(max_steps=300, lr_schedule="wsd", cooldown_frac=0.2)
    assert [learning_rate(i, short) for i in range(81)] == [learning_rate(i, longer) for i in range(81)]
    assert learning_rate(81, short) < learning_rate(81, longer)


# ---- a training run with Muon ----


COMMON = ["--data-dir", None, "--micro-batch-size", 4, "--total-batch-tokens", 8 * SEQ, *MUON]


def common(data_dir, *more):
    return [str(data_dir) if a is None else a for a in COMMON] + list(more)


@pytest.mark.slow
def test_a_muon_run_resumed_from_its_checkpoint_is_bit_identical(data_dir, tmp_path):
    args = common(data_dir, "--max-steps", 6)
    run_in_process(*args, "--run-dir", tmp_path / "full", "--save-every", 3)
    run_in_process(*args, "--run-dir", tmp_path / "resumed", "--resume", tmp_path / "full" / "checkpoint-000003")
    assert_same_weights(tmp_path / "full" / "final", tmp_path / "resumed" / "final")
    assert logged(tmp_path / "resumed", "loss") == logged(tmp_path / "full", "loss")[3:]
    for f in ("settings.yaml", "report.json"):  # the optimizer is part of what the run says it was
        text = (tmp_path / "full" / f).read_text()
        settings = yaml.safe_load(text) if f.endswith("yaml") else json.loads(text)["settings"]
        assert settings["optimizer"] == "muon" and settings["muon_lr"] == 3e-3


@pytest.mark.slow
def test_a_finished_wsd_run_extended_from_its_last_flat_checkpoint_ends_as_a_run_started_longer(data_dir, tmp_path):
    wsd = common(data_dir, "--lr-schedule", "wsd", "--cooldown-frac", 0.3, "--warmup-steps", 1)
    run_in_process(*wsd, "--max-steps", 6, "--save-every", 4, "--run-dir", tmp_path / "short")  # cools down after 4
    run_in_process(*wsd, "--max-steps", 8, "--run-dir", tmp_path / "long")  # flat until 6
    run_in_process(*wsd, "--max-steps", 8, "--run-dir", tmp_path / "extended",
                   "--resume", tmp_path / "short" / "checkpoint-000004")
    assert_same_weights(tmp_path / "long" / "final", tmp_path / "extended" / "final")
    assert logged(tmp_path / "extended", "loss") == logged(tmp_path / "long", "loss")[4:]


def test_a_wsd_run_keeps_the_end_of_its_flat_phase_whatever_save_every_and_names_it_when_finished(
        data_dir, tmp_path, capsys):
    from gpt2repro.settings import SettingsError

    run_dir = tmp_path / "run"
    wsd = common(data_dir, "--lr-schedule", "wsd", "--cooldown-frac", 0.5, "--warmup-steps", 1, "--max-steps", 4,
                 "--run-dir", run_dir)
    run_in_process(*wsd, "--save-every", 3, "--keep-checkpoints", 1)  # flat until 2; 3 is the newest periodic one
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-000002", "checkpoint-000003"]
    capsys.readouterr()
    run_in_process(*wsd, "--save-every", 3, "--keep-checkpoints", 1, "--resume", "auto")
    out = capsys.readouterr().out
    flat = run_dir / "checkpoint-000002"
    assert f"{run_dir} is finished" in out and "raise --max-steps" not in out  # final/ has cooled down
    command = out.split("\n  ")[-1].split()
    at = {option: command[command.index(option) + 1] for option in ("--resume", "--run-dir", "--max-steps")}
    assert at == {"--resume": str(flat), "--run-dir": f"{run_dir}-8", "--max-steps": "8"}
    assert command.count("--max-steps") == command.count("--run-dir") == 1 and "auto" not in command
    # a checkpoint records its optimizer: resuming it with the other one is refused in one line, before loading
    with pytest.raises(SettingsError, match=f"^{flat} was trained with --optimizer muon; pass --optimizer muon"):
        run_in_process(*wsd, "--run-dir", tmp_path / "other", "--resume", flat, "--optimizer", "adamw")


def test_a_checkpoint_from_before_muon_is_refused_under_muon_in_one_line(data_dir, tmp_path):
    """Checkpoints saved before the trainer state recorded the optimizer: their report's settings tell, and without
    --optimizer in those (saved before it existed) the checkpoint is AdamW's."""
    from gpt2repro.checkpoints import STATE_FILE, checkpoint_optimizer
    from gpt2repro.settings import SettingsError

    old = tmp_path / "checkpoint-000010"
    (old / STATE_FILE).parent.mkdir(parents=True)
    (old / STATE_FILE).write_text(json.dumps({"step": 10}))
    assert checkpoint_optimizer(old) == "adamw"
    with pytest.raises(SettingsError, match=f"^{old} was trained with --optimizer adamw; pass --optimizer adamw to "):
        run_in_process("--data-dir", data_dir, "--run-dir", tmp_path / "run", "--max-steps", 20, "--resume", old)
    (old / "report.json").write_text(json.dumps({"settings": {"optimizer": "muon"}}))
    assert checkpoint_optimizer(old) == "muon"


@pytest.mark.slow
def test_muon_on_two_processes_matches_one_and_resumes_on_either(data_dir, tmp_path):
    args = common(data_dir, "--max-steps", 4)
    run_in_process(*args, "--run-dir", tmp_path / "one", "--save-every", 2)
    ddp = run_cli(*args, "--run-dir", tmp_path / "two", launcher=launcher("cpu_2proc.yaml"))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    resumed = run_cli(*args, "--run-dir", tmp_path / "resumed", "--resume", tmp_path / "one" / "checkpoint-000002",
                      launcher=launcher("cpu_2proc.yaml"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert logged(tmp_path / "two", "loss") == pytest.approx(logged(tmp_path / "one", "loss"), rel=1e-5)
    assert logged(tmp_path / "resumed", "loss") == pytest.approx(logged(tmp_path / "one", "loss")[2:], rel=1e-5)
    # Weights agree less closely than AdamW's (3e-5): gradients summed in another order differ in their last bits,
    # and Newton-Schulz, run in bf16 and raising small singular values towards 1, turns that into differences of
    # bf16's resolution in the update, which AdamW's per-coordinate normalization then carries into the embedding.
    # The losses above are where a real difference (gradients not averaged, a step missed) shows.
    for other in ("two", "resumed"):
        assert_same_weights(tmp_path / "one" / "final", tmp_path / other / "final", atol=1e-2)


@pytest.mark.slow
def test_muon_with_micro_batch_auto_matches_a_run_started_at_the_size_it_settles_on(data_dir, tmp_path, monkeypatch):
    from modeling_gpt2repro import GPT2ReproForCausalLM

    forward = GPT2ReproForCausalLM.forward

    def small_memory(self, input_ids=None, **kwargs):
        if input_ids is not None and self.training and input_ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(self, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(GPT2ReproForCausalLM, "forward", small_memory)
    args = ["--data-dir", data_dir, "--max-steps", 3, "--total-batch-tokens", 8 * SEQ, *MUON]
    run_in_process(*args, "--run-dir", tmp_path / "auto", "--micro-batch-size", "auto")
    run_in_process(*args, "--run-dir", tmp_path / "small", "--micro-batch-size", 2)
    assert logged(tmp_path / "auto", "loss") == logged(tmp_path / "small", "loss")
    assert_same_weights(tmp_path / "auto" / "final", tmp_path / "small" / "final")


def test_muon_steps_on_gradients_clipped_to_grad_clip_as_adamw_does(data_dir, tmp_path, monkeypatch):
    from gpt2repro.optim import MuonAdamW

    norms, step = [], MuonAdamW.step

    def recorded(self, *args, **kwargs):
        norms.append(float(torch.nn.utils.get_total_norm([p.grad for g in self.param_groups for p in g["params"]])))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(MuonAdamW, "step", recorded)
    run_in_process(*common(data_dir, "--max-steps", 3, "--grad-clip", 0.5, "--run-dir", tmp_path))
    logged_norms = logged(tmp_path, "grad_norm")  # the norm before clipping, as the log line documents
    assert len(norms) == 3 and all(n > 0.5 for n in logged_norms)
    assert norms == pytest.approx([0.5] * 3, rel=1e-5)


@pytest.mark.slow
def test_a_diverging_muon_run_skips_its_bad_updates_then_aborts(data_dir, tmp_path, capsys):
    with pytest.raises(RuntimeError, match="non-finite steps in a row"):
        run_in_process("--data-dir", data_dir, "--run-dir", tmp_path, "--max-steps", 20, "--micro-batch-size", 4,
                       "--total-batch-tokens", 4 * SEQ, "--optimizer", "muon", "--lr", 1e30, "--muon-lr", 1e30,
                       "--warmup-steps", 1, "--max-bad-steps", 3)
    assert capsys.readouterr().out.count("update skipped") == 3


def test_muon_training_reads_from_the_device_only_at_the_steps_that_log(data_dir, tmp_path, count_reads):
    run_in_process(*common(data_dir, "--max-steps", 6, "--log-every", 3, "--run-dir", tmp_path))
    for step in range(5):  # the 6th is the last: evaluation and the final save follow it
        assert len(count_reads.get(step, [])) == (1 if step == 2 else 0), (step, count_reads.get(step))


@pytest.mark.slow
def test_muon_under_fsdp_is_refused_in_one_line_that_says_what_to_use(data_dir, tmp_path):
    result = run_cli(*common(data_dir, "--max-steps", 2, "--run-dir", tmp_path),
                     launcher=launcher("cpu_fsdp_2proc.yaml"))
    assert result.returncode != 0
    said = [line for line in result.stderr.splitlines() if line.startswith("error: --optimizer muon under FSDP")]
    assert said and "cpu_2proc.yaml" in said[0] and "--optimizer adamw" in said[0], result.stderr[-3000:]
    assert "[rank0]: Traceback" not in result.stderr  # the launcher's own report of a failed worker follows


def test_the_report_and_card_say_which_optimizer_and_schedule_trained_the_model():
    from gpt2repro.report import optimizer_line
    from gpt2repro.settings import PRESETS

    from gpt2repro.model_card import card_body
    from gpt2repro.report import render_markdown

    settings = {**vars(Settings()), **PRESETS["gpt2-124m-muon"]}
    muon = optimizer_line(settings)
    assert f"- optimizer: {muon}" in render_markdown({"settings": settings})
    assert f"- optimizer: {muon}" in card_body({"settings": settings})
    assert muon.startswith("Muon on the blocks' matrices (peak lr 0.0036), AdamW on the embeddings")
    assert "250 warmup steps, then flat, then linear over the last 30% of the steps (WSD) to 0.0" in muon
    assert optimizer_line({"lr": 6e-4, "warmup_steps": 715, "min_lr_ratio": 0.1}) == (
        "AdamW (peak lr 0.0006); 715 warmup steps, then cosine to 0.1 x the peak")  # a report from before Muon
