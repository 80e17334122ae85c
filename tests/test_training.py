"""Pretraining with Accelerate: schedule, optimizer groups, data order, checkpoints, resume, errors, results."""

import dataclasses
import errno
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import (
    check_killed_and_resumed_like_whole,
    check_two_processes_train_like_one,
    device_reads_of_a_step,
    run_metrics,
    step_losses,
    varied_text,
    wait_for,
)
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from test_tokenizer import console_script
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from hf_gpt import HfGptConfig, HfGptForCausalLM
from hf_gpt.cli import main
from hf_gpt.data.tokens import prepare_data
from hf_gpt.train.checkpoints import check_sharded_state, complete_checkpoints
from hf_gpt.train.loop import SamplePositions, TrainingDiverged
from hf_gpt.train.optimization import lr_multiplier, parameter_groups
from hf_gpt.train.pretraining import pretrain
from hf_gpt.train.pretraining_setup import PretrainArguments, build_config

NO_DROPOUT = ["--set", "embd_pdrop=0", "--set", "attn_pdrop=0", "--set", "resid_pdrop=0"]


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, trained_tokenizer_dir):
    """A small prepared data folder (about 30k tokens) made with the session's tokenizer."""
    root = tmp_path_factory.mktemp("pretrain")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": varied_text(s, 300)}) + "\n" for s in range(40)), encoding="utf-8")
    prepare_data([corpus], trained_tokenizer_dir, root / "data", val_fraction=0.1, workers=1)
    return root / "data"


def tiny_args(tmp_path, prepared, tokenizer_dir, **overrides) -> PretrainArguments:
    values = dict(
        output_dir=str(tmp_path / "run"),
        data=[str(prepared)],
        tokenizer=None if tokenizer_dir is None else str(tokenizer_dir),
        model="gpt2-tiny",
        block_size=32,
        batch_size=8,
        max_steps=12,
        warmup_steps=3,
        learning_rate=3e-3,
        eval_every=6,
        eval_blocks=8,
        save_every=4,
        log_every=1,
        log_with="none",
        peak_tflops=1.0,
    )
    return PretrainArguments(**{**values, **overrides})


def cli_pretrain(prepared, tokenizer_dir, output, *extra) -> list[str]:
    return [
        console_script(), "pretrain", str(prepared), "--tokenizer", str(tokenizer_dir), "--output", str(output),
        "--model", "gpt2-tiny", "--block-size", "32", "--batch-size", "8", "--warmup-steps", "3",
        "--eval-every", "10", "--eval-blocks", "4", "--log-every", "1", "--log-with", "none", "--peak-tflops", "1",
        *extra,
    ]  # fmt: skip


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


# ---------------------------------------------------------------------------------------------------------------
# Pieces


def test_warmup_then_cosine_to_ten_percent():
    lr = [lr_multiplier(s, warmup_steps=10, total_steps=110, final_ratio=0.1) for s in range(120)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)  # linear warmup
    assert all(a < b for a, b in zip(lr[:9], lr[1:10], strict=True))
    assert lr[10] == pytest.approx(1.0)
    assert lr[60] == pytest.approx(0.55)  # half way down the cosine: (1 + 0.1) / 2
    assert all(a >= b for a, b in zip(lr[10:110], lr[11:111], strict=True))
    assert lr[110] == pytest.approx(0.1) and lr[119] == pytest.approx(0.1)  # stays at the floor


def test_warmup_then_linear_decay_to_zero_for_fine_tuning():
    lr = [lr_multiplier(s, warmup_steps=4, total_steps=104, final_ratio=0.0, decay="linear") for s in range(110)]
    assert lr[0] == pytest.approx(0.25) and lr[3] == pytest.approx(1.0)
    assert lr[29] == pytest.approx(0.75) and lr[54] == pytest.approx(0.5)  # a straight line, not a cosine (0.85, 0.5)
    assert lr[104] == 0.0 and lr[109] == 0.0


def test_no_weight_decay_on_biases_norms_and_embeddings():
    model = HfGptForCausalLM(HfGptConfig.from_preset("gpt2-tiny"))
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decayed and all(n.endswith("weight") and "ln" not in n and "wte" not in n for n in decayed)
    assert {"transformer.wte.weight", "transformer.wpe.weight"} <= exempt  # wte is also the tied lm_head
    assert any(n.endswith("bias") for n in exempt) and any(".ln_" in n for n in exempt)
    assert len(decayed) + len(exempt) == len(list(model.parameters()))  # every parameter, tied ones once


def test_sample_positions_are_a_permutation_per_epoch_and_resume_exactly():
    whole = list(SamplePositions(10, seed=3, start=0, stop=30))
    assert sorted(whole[:10]) == sorted(whole[10:20]) == list(range(10))
    assert whole[:10] != whole[10:20]  # a new order each epoch
    assert list(SamplePositions(10, seed=3, start=13, stop=30)) == whole[13:]
    assert list(SamplePositions(10, seed=4, start=0, stop=10)) != whole[:10]


def test_vocabulary_follows_the_tokenizer_unless_set(trained_tokenizer):
    config = build_config("gpt2", {"num_hidden_layers": 1}, trained_tokenizer)
    assert config.vocab_size == len(trained_tokenizer) == 700
    assert config.eos_token_id == config.bos_token_id == trained_tokenizer.eos_token_id
    assert build_config("gpt2-tiny", {"vocab_size": 768}, trained_tokenizer).vocab_size == 768  # padded is fine
    with pytest.raises(ValueError, match=r"vocab_size \(512\) is smaller than the tokenizer's vocabulary \(700"):
        build_config("gpt2-tiny", {"vocab_size": 512}, trained_tokenizer)
    with pytest.raises(ValueError, match="neither a preset"):
        build_config("gpt5", {}, trained_tokenizer)


# ---------------------------------------------------------------------------------------------------------------
# Errors before training


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"block_size": 256}, r"block_size 256 is larger than the model's context \(max_position_embeddings=128\)"),
        ({"batch_size": 4096}, r"fewer than one batch of 4096"),
        ({"batch_size": 8, "micro_batch_size": 3}, r"batch_size 8 is not a multiple of micro_batch_size 3"),
        ({"model_overrides": {"vocab_size": 100}}, r"smaller than the tokenizer's vocabulary"),
        ({"warmup_steps": 50}, r"warmup_steps must be in \[0, max_steps=12\]"),
        ({"mixed_precision": "fp8"}, r"mixed_precision must be one of"),
    ],
)
def test_bad_settings_fail_before_training(tmp_path, prepared, trained_tokenizer_dir, overrides, message):
    with pytest.raises(ValueError, match=message):
        pretrain(tiny_args(tmp_path, prepared, trained_tokenizer_dir, **overrides))
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "model").exists()
    assert not (tmp_path / "run").exists()  # a refused run leaves no folder that would block the next one


def test_unwritable_or_foreign_output_is_refused(tmp_path, prepared, trained_tokenizer_dir):
    foreign = tmp_path / "run"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty"):
        pretrain(tiny_args(tmp_path, prepared, trained_tokenizer_dir))
    with pytest.raises(ValueError, match="has no .hf_gpt-output.json, so it is not an earlier output of .pretrain."):
        pretrain(tiny_args(tmp_path, prepared, trained_tokenizer_dir, overwrite=True))
    assert (foreign / "notes.txt").read_text() == "mine"
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="cannot write to"):
            pretrain(tiny_args(tmp_path, prepared, trained_tokenizer_dir, output_dir=str(locked / "run")))


def test_prepared_data_needs_its_tokenizer(tmp_path, prepared, tokenizer):
    with pytest.raises(ValueError, match="give the tokenizer it was prepared with"):
        pretrain(tiny_args(tmp_path, prepared, None))
    other = tmp_path / "other-tokenizer"
    tokenizer.save_pretrained(other)
    with pytest.raises(ValueError, match="prepared with a different tokenizer"):
        pretrain(tiny_args(tmp_path, prepared, other, overwrite=True))


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, prepared, trained_tokenizer_dir):
    # Adam moves every weight by about the learning rate: 1e30 makes the next forward overflow.
    args = tiny_args(tmp_path, prepared, trained_tokenizer_dir, learning_rate=1e30, warmup_steps=0, save_every=1)
    with pytest.raises(
        TrainingDiverged, match=r"the loss is (nan|inf) at step 2 of 12; .*last good checkpoint is .*step-00000001"
    ):
        pretrain(args)
    assert [p.name for p in complete_checkpoints(tmp_path / "run" / "checkpoints")] == ["step-00000001"]
    assert not (tmp_path / "run" / "model").exists()


# ---------------------------------------------------------------------------------------------------------------
# A whole run


def test_pretrain_writes_a_model_the_ecosystem_loads(tmp_path, prepared, trained_tokenizer_dir):
    model_dir = pretrain(tiny_args(tmp_path, prepared, trained_tokenizer_dir, keep_checkpoints=2))
    run = tmp_path / "run"
    assert model_dir == run / "model"
    assert [p.name for p in complete_checkpoints(run / "checkpoints")] == ["step-00000008", "step-00000012"]

    log = run_metrics(run)
    losses = [m["loss"] for m in log if "loss" in m]
    assert len(losses) == 12 and losses[-1] < losses[0] - 0.3  # it learns
    evals = [m for m in log if "val_loss" in m]
    assert [m["step"] for m in evals] == [6, 12]
    assert evals[-1]["val_perplexity"] == pytest.approx(math.exp(evals[-1]["val_loss"]))
    assert all(0 < m["mfu"] and m["tokens_per_second"] > 0 for m in log if "mfu" in m)

    config = json.loads((model_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_hf_gpt.HfGptForCausalLM"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "modeling_hf_gpt.py").is_file()
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["do_sample"] is True and generation["top_k"] == 50

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert len(tokenizer) == 700 and model.config.vocab_size == 700
    assert tokenizer.model_max_length == model.config.max_position_embeddings == 128  # the tokenizer said 1024
    torch.testing.assert_close(model.lm_head.weight, model.transformer.wte.weight)
    generator = pipeline("text-generation", model=str(model_dir))
    text = generator("The quick", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("The quick") and len(text) > len("The quick")

    card = ModelCard.load(model_dir / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert {"hf_gpt", "custom_code"} <= set(card.data.tags)
    assert f"{evals[-1]['val_perplexity']:.2f}" in card.text and "| Steps | 12 of 12 |" in card.text
    (result,) = card.data.eval_results  # the Hub's model-index
    assert result.metric_type == "perplexity" and result.metric_value == pytest.approx(evals[-1]["val_perplexity"])


def test_config_file_raw_text_and_a_tokenizer_trained_on_the_fly(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": varied_text(s, 200)}) + "\n" for s in range(30)), encoding="utf-8")
    HfGptConfig.from_preset("gpt3-tiny", num_hidden_layers=3, hidden_size=48).save_pretrained(tmp_path / "shape")
    args = PretrainArguments(
        output_dir=str(tmp_path / "run"), data=[str(corpus)], model=str(tmp_path / "shape"), vocab_size=300,
        block_size=32, batch_size=4, max_steps=3, warmup_steps=1, eval_every=3, save_every=3, log_with="none",
        val_fraction=0.1, peak_tflops=1.0,
    )  # fmt: skip
    model_dir = pretrain(args)
    run = tmp_path / "run"
    assert len(AutoTokenizer.from_pretrained(run / "tokenizer")) == 300
    assert json.loads((run / "data" / "manifest.json").read_text())["tokenizer"]["vocab_size"] == 300
    config = HfGptConfig.from_pretrained(model_dir)
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (3, 48, 300)
    assert config.attention_layers == ["global", "local", "global"]  # from the file, not a preset


def test_gradient_checkpointing_and_bf16_train(tmp_path, prepared, trained_tokenizer_dir):
    no_dropout = {"embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0}
    common = dict(max_steps=4, model_overrides=no_dropout, save_every=4, eval_every=4)
    pretrain(tiny_args(tmp_path / "a", prepared, trained_tokenizer_dir, **common))
    AcceleratorState._reset_state(reset_partial_state=True)
    pretrain(tiny_args(tmp_path / "b", prepared, trained_tokenizer_dir, gradient_checkpointing=True, **common))
    plain, recomputed = step_losses(tmp_path / "a" / "run"), step_losses(tmp_path / "b" / "run")
    for step in plain:
        assert recomputed[step][0] == pytest.approx(plain[step][0], rel=1e-5)
    AcceleratorState._reset_state(reset_partial_state=True)
    pretrain(tiny_args(tmp_path / "c", prepared, trained_tokenizer_dir, mixed_precision="bf16", **common))
    bf16 = step_losses(tmp_path / "c" / "run")
    assert all(math.isfinite(loss) for loss, _ in bf16.values())
    assert bf16[1][0] == pytest.approx(plain[1][0], abs=0.05) and bf16[1][0] != plain[1][0]  # autocast was on
    assert next(iter(weights(tmp_path / "c" / "run" / "model").values())).dtype == torch.float32


def test_metrics_reach_tensorboard(tmp_path, prepared, trained_tokenizer_dir):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator", reason="needs tensorboard (the dev extra)"
    )
    pretrain(tiny_args(tmp_path, prepared, trained_tokenizer_dir, max_steps=4, eval_every=2, log_with="auto"))
    events = list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))
    assert events
    reader = event_accumulator.EventAccumulator(str(events[0].parent))
    reader.Reload()
    assert {"loss", "lr", "val_loss", "val_perplexity", "mfu"} <= set(reader.Tags()["scalars"])
    assert [e.step for e in reader.Scalars("val_loss")] == [2, 4]


@pytest.mark.slow
def test_compiled_training_saves_plain_parameter_names(tmp_path, prepared, trained_tokenizer_dir):
    args = tiny_args(tmp_path, prepared, trained_tokenizer_dir, max_steps=2, warmup_steps=1, save_every=2, compile=True)
    model_dir = pretrain(args)
    assert not any(key.startswith("_orig_mod.") for key in weights(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir)  # nothing missing or unexpected
    assert model.generation_config.top_k == 50 and model.generation_config.do_sample


def test_gradient_accumulation_gives_the_same_training(tmp_path, prepared, trained_tokenizer_dir):
    no_dropout = {"embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0}
    common = dict(max_steps=6, model_overrides=no_dropout, save_every=6, eval_every=6)
    pretrain(tiny_args(tmp_path / "a", prepared, trained_tokenizer_dir, **common))
    AcceleratorState._reset_state(reset_partial_state=True)
    pretrain(tiny_args(tmp_path / "b", prepared, trained_tokenizer_dir, micro_batch_size=2, **common))
    one, four = step_losses(tmp_path / "a" / "run"), step_losses(tmp_path / "b" / "run")
    assert one.keys() == four.keys() == set(range(1, 7))
    for step in one:
        assert four[step][0] == pytest.approx(one[step][0], rel=1e-5) and four[step][1] == one[step][1]


# ---------------------------------------------------------------------------------------------------------------
# Interrupted runs (separate processes, killed for real)


@pytest.mark.slow
def test_sigkill_then_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, prepared, trained_tokenizer_dir):
    steps = ["--max-steps", "60", "--save-every", "10", "--keep-checkpoints", "2"]
    _, cut = check_killed_and_resumed_like_whole(
        lambda output: cli_pretrain(prepared, trained_tokenizer_dir, output, *steps), tmp_path, steps=60
    )
    # Newest checkpoints kept, named by step (not restarted by Accelerate's counter).
    assert [p.name for p in complete_checkpoints(cut / "checkpoints")] == ["step-00000050", "step-00000060"]


def test_resume_refuses_changed_arguments(tmp_path, prepared, trained_tokenizer_dir):
    pretrain(tiny_args(tmp_path, prepared, trained_tokenizer_dir, max_steps=4, save_every=2))
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(ValueError, match="cannot resume .*: learning_rate differ"):
        pretrain(tiny_args(tmp_path, prepared, trained_tokenizer_dir, max_steps=4, learning_rate=1e-3, resume=True))


@pytest.mark.slow
def test_ctrl_c_saves_a_loadable_model(tmp_path, prepared, trained_tokenizer_dir):
    run = tmp_path / "run"
    process = subprocess.Popen(
        cli_pretrain(prepared, trained_tokenizer_dir, run, "--max-steps", "100000", "--save-every", "5"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(run / "checkpoints" / "step-00000005", process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted at step" in stdout and f"model saved to {run / 'model'}" in stdout
    stopped_at = int(stdout.split("interrupted at step ")[1].split(":")[0])
    assert complete_checkpoints(run / "checkpoints")[-1].name == f"step-{stopped_at:08d}"  # resumable from there
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    assert model.config.vocab_size == 700
    assert "(interrupted)" in (run / "model" / "README.md").read_text()


# ---------------------------------------------------------------------------------------------------------------
# Finished runs, tampered checkpoints, checkpoints that cannot be written

# `hf-gpt pretrain ...` killed for real (SIGKILL) at the worst moment: its last checkpoint saved, its model not yet.
KILLED_BEFORE_THE_MODEL = """
import os, signal, sys
from hf_gpt.train import pretraining as training
training.Pretraining.save_model = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
from hf_gpt.cli import main
sys.exit(main(sys.argv[1:]))
"""


def resumed(args: PretrainArguments) -> Path:
    AcceleratorState._reset_state(reset_partial_state=True)  # as in a new process
    return pretrain(dataclasses.replace(args, resume=True))


def test_resuming_a_finished_run_writes_its_missing_model_once(tmp_path, prepared, trained_tokenizer_dir, capsys):
    args = tiny_args(tmp_path, prepared, trained_tokenizer_dir, max_steps=4, save_every=2, eval_every=2)
    model_dir = pretrain(args)
    expected, card = weights(model_dir), (model_dir / "README.md").read_text()
    shutil.rmtree(model_dir)  # as if killed after the last checkpoint, before the model was written
    capsys.readouterr()

    assert resumed(args) == model_dir
    assert "finished training, but its final model was not written" in capsys.readouterr().out
    rewritten = weights(model_dir)
    assert rewritten.keys() == expected.keys() and all(torch.equal(rewritten[k], expected[k]) for k in expected)
    assert (model_dir / "README.md").read_text() == card  # the same steps, time and (recomputed) validation scores

    # Resumed once more: the run is complete and its model is left as it is.
    written = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert resumed(args) == model_dir
    assert f"is complete (4 steps): the model is in {model_dir}" in capsys.readouterr().out
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == written

    # A model from an earlier step (saved on Ctrl-C before the run was resumed) is not the run's result.
    save_file({name: tensor + 1 for name, tensor in expected.items()}, model_dir / "model.safetensors")
    resumed(args)
    assert "its final model was not written" in capsys.readouterr().out
    assert all(torch.equal(weights(model_dir)[k], expected[k]) for k in expected)


@pytest.mark.slow
def test_killed_before_writing_its_model_then_resumed_exits_0(tmp_path, prepared, trained_tokenizer_dir):
    run = tmp_path / "run"
    command = cli_pretrain(prepared, trained_tokenizer_dir, run, "--max-steps", "4", "--save-every", "2")
    killed = subprocess.run([sys.executable, "-c", KILLED_BEFORE_THE_MODEL, *command[1:]], capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert complete_checkpoints(run / "checkpoints")[-1].name == "step-00000004" and not (run / "model").exists()

    done = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "writing it from the last checkpoint" in done.stdout and f"model saved to {run / 'model'}" in done.stdout
    assert AutoModelForCausalLM.from_pretrained(run / "model").config.vocab_size == 700
    again = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"is complete (4 steps): the model is in {run / 'model'}" in again.stdout


class RunsCode:
    """Unpickled, it creates `path`: what an attacker's replacement of a checkpoint file could do."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_resume_refuses_checkpoint_files_that_would_run_code(tmp_path, prepared, trained_tokenizer_dir):
    args = tiny_args(tmp_path, prepared, trained_tokenizer_dir, max_steps=4, save_every=2)
    pretrain(args)
    latest = complete_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    # Every pickle Accelerate would load, and the one it unpickles without weights_only when it is there.
    pickled = sorted({p.name for p in latest.iterdir() if p.suffix in (".bin", ".pkl")} | {"custom_checkpoint_0.pkl"})
    assert {"optimizer.bin", "random_states_0.pkl"} < set(pickled)
    witness = tmp_path / "PWNED"
    for name in pickled:
        file = latest / name
        original = file.read_bytes() if file.exists() else None
        torch.save(RunsCode(witness), file)
        with pytest.raises(ValueError, match=f"checkpoint file {re.escape(str(file))} does not load as plain") as e:
            resumed(args)
        assert not witness.exists(), f"{name} ran code"
        assert "\n" not in str(e.value)  # one line for the CLI to print
        if original is None:
            file.unlink()
        else:
            file.write_bytes(original)


def save_sharded(state: dict, folder: Path) -> Path:
    """A torch.distributed.checkpoint folder, as FSDP's model and optimizer state are saved, by torch's own writer."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is ... uninitialized": one process, as intended
        dcp.save(state, checkpoint_id=folder, no_dist=True)
    return folder


def test_sharded_fsdp_state_is_read_the_safe_way_before_resuming(tmp_path, prepared, trained_tokenizer_dir):
    """torch unpickles a sharded folder's index and its non-tensor entries without restriction."""
    state = {"weight": torch.randn(8, 4), "step": torch.tensor(3.0), "lr": 3e-4, "betas": (0.9, 0.95), "fused": True}
    check_sharded_state(save_sharded(state, tmp_path / "optimizer_0"))  # what torch writes passes
    witness = tmp_path / "PWNED"
    replaced_entry = save_sharded({**state, "lr": RunsCode(witness)}, tmp_path / "replaced")
    with pytest.raises(ValueError, match=r"replaced/__0_0.distcp \(entry lr\) does not load as plain tensors"):
        check_sharded_state(replaced_entry)
    assert not witness.exists()
    # Inside a real checkpoint, a replaced index stops the resume before Accelerate reads anything.
    args = tiny_args(tmp_path, prepared, trained_tokenizer_dir, max_steps=2, warmup_steps=1, save_every=2)
    pretrain(args)
    sharded = save_sharded(state, complete_checkpoints(tmp_path / "run" / "checkpoints")[-1] / "pytorch_model_fsdp_0")
    (sharded / ".metadata").write_bytes(pickle.dumps(RunsCode(witness)))
    with pytest.raises(ValueError, match=r"pytorch_model_fsdp_0/.metadata is not a plain checkpoint index"):
        resumed(args)
    assert not witness.exists()


def test_a_checkpoint_that_cannot_be_written_is_removed_and_reported(
    tmp_path, prepared, trained_tokenizer_dir, monkeypatch, capsys
):
    checkpoints = tmp_path / "run" / "checkpoints"
    save = torch.save

    def disk_full_at_step_4(obj, f, *args, **kwargs):
        staging = Path(f).parent
        if staging.name == ".step-00000004.tmp":
            assert (staging / "model.safetensors").is_file()  # mid-way: the weights took the last of the space
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_step_4)
    command = cli_pretrain(prepared, trained_tokenizer_dir, tmp_path / "run", "--max-steps", "4", "--save-every", "2")
    assert main(command[1:]) == 1  # the environment failed, not the input
    assert capsys.readouterr().err.splitlines()[-1] == (  # after the progress bar
        f"hf-gpt pretrain: saving checkpoint step-00000004 to {checkpoints} failed: No space left on device; "
        f"the previous checkpoint {checkpoints / 'step-00000002'} is intact"
    )
    assert [p.name for p in checkpoints.iterdir()] == ["step-00000002"]  # the partial checkpoint is gone
    assert not (tmp_path / "run" / "model").exists()


# ---------------------------------------------------------------------------------------------------------------
# Distributed: two real processes (gloo) against one


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path, prepared, trained_tokenizer_dir):
    steps = ["--max-steps", "8", "--save-every", "4", "--warmup-steps", "2", *NO_DROPOUT]
    _, double = check_two_processes_train_like_one(
        lambda output: cli_pretrain(prepared, trained_tokenizer_dir, output, *steps), tmp_path, steps=8
    )
    assert [m["step"] for m in run_metrics(double) if "val_loss" in m] == [8]


def test_a_training_step_reads_the_device_once_whatever_the_accumulation(tmp_path, prepared, trained_tokenizer_dir):
    """The model checks a user's token ids by reading them back from the device (a host sync on a GPU); the
    training loop's batches were checked by TokenBlocks on the CPU, so its micro steps read nothing and a step
    reads the device once (the loss, the stop flag and the gradient norm together)."""
    from hf_gpt.train.pretraining import Pretraining

    loop = Pretraining(tiny_args(tmp_path, prepared, trained_tokenizer_dir, micro_batch_size=2))  # 4 micro steps
    reads, (loss, grad_norm, stopping) = device_reads_of_a_step(loop)
    assert reads == ["tolist"]
    assert math.isfinite(loss) and grad_norm > 0 and stopping is False
