"""`hf-gpt push` and the Hub round trip, against the Hub-protocol server of hub_server.py (never the internet)."""

import functools
import hashlib
import json
import re
import subprocess
import sys

import pytest
import torch
from conftest import WITHOUT_HF_GPT, seeded, tiny_config
from huggingface_hub import HfApi
from test_tokenizer import console_script

from hf_gpt import HfGptForCausalLM
from hf_gpt.hub.model_folder import generation_defaults

pytest_plugins = ["hub_server"]

PROMPT = "The quick brown"
LOAD_AND_GENERATE = """
import json
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
model = AutoModelForCausalLM.from_pretrained("alice/tiny-gpt", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("alice/tiny-gpt", trust_remote_code=True)  # else it asks: config has code
generate = pipeline("text-generation", model="alice/tiny-gpt", trust_remote_code=True)
text = generate(PROMPT, max_new_tokens=8, do_sample=False)[0]["generated_text"]
print(json.dumps({"class": type(model).__module__ + "." + type(model).__name__, "text": text, "vocab": len(tokenizer)}))
"""


@pytest.fixture
def model_folder(tmp_path, trained_tokenizer):
    """A model folder as pretrain writes it: weights, config with auto_map, code, tokenizer, generation config."""
    folder = tmp_path / "model"
    config = tiny_config(vocab_size=len(trained_tokenizer), bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = seeded(HfGptForCausalLM, config, seed=7)
    model.generation_config = generation_defaults(model.config)
    model.save_pretrained(folder)
    trained_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def push_here(hub, monkeypatch):
    """hf_gpt.hub.push in this process, as alice, to the test hub (HfApi reads the endpoint when it is built)."""
    from huggingface_hub import constants

    from hf_gpt.hub.push import push as push_folder

    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    return functools.partial(push_folder, token=hub.token("alice"))


def add_run_clutter(folder, outside) -> None:
    """What a run folder holds besides the model: checkpoints, secrets, pickles, logs, hidden files, a link out."""
    step = folder / "checkpoints" / "step-00000010"
    step.mkdir(parents=True)
    torch.save({"step": 10}, step / "optimizer.bin")
    (step / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    torch.save({}, folder / "pytorch_model.bin")
    torch.save({}, folder / "model.pt")
    (folder / "hf_token.txt").write_text("hf_not_for_the_hub")
    (folder / "secrets.yaml").write_text("password: hunter2\n")
    (folder / "finetune_args.json").write_text(json.dumps({"train": "/home/me/private/data.jsonl"}))
    (folder / "logs").mkdir()
    (folder / "logs" / "train.jsonl").write_text('{"step": 10, "loss": 3.2}\n')
    (folder / ".env").write_text("HF_TOKEN=hf_not_for_the_hub\n")
    outside.write_text("root:x:0:0\n")
    (folder / "notes.txt").symlink_to(outside)  # not pushed, so not refused either


def left_out_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("left out")]
    assert len(lines) == 1, out
    return lines[0]


def fingerprint(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


def push(hub, home, user: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([console_script(), "push", *map(str, args)], env=hub.env(home, user), capture_output=True,
                          text=True)  # fmt: skip


def local_greedy(folder) -> str:
    from transformers import pipeline

    generate = pipeline("text-generation", model=str(folder))
    return generate(PROMPT, max_new_tokens=8, do_sample=False)[0]["generated_text"]


def test_push_then_load_anywhere_without_hf_gpt(hub, model_folder, tmp_path):
    before = fingerprint(model_folder)
    done = push(hub, tmp_path / "pusher", "alice", model_folder, "alice/tiny-gpt", "--license", "apache-2.0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pushed" in done.stdout and hub.token("alice") not in done.stdout + done.stderr  # never printed
    assert fingerprint(model_folder) == before
    assert len([r for r in hub.requests if r.startswith("POST") and "/commit/" in r]) == 1  # one commit
    files = set(HfApi(endpoint=hub.endpoint, token=hub.token("alice")).list_repo_files("alice/tiny-gpt"))
    assert {"config.json", "model.safetensors", "configuration_hf_gpt.py", "modeling_hf_gpt.py", "tokenizer.json",
            "tokenizer_config.json", "generation_config.json", "README.md"} <= files  # fmt: skip
    card = hub.read("alice/tiny-gpt", "README.md").decode()
    assert "license: apache-2.0" in card and 'from_pretrained("alice/tiny-gpt", trust_remote_code=True)' in card

    script = WITHOUT_HF_GPT + f"PROMPT = {PROMPT!r}\n" + LOAD_AND_GENERATE
    home = tmp_path / "elsewhere"
    online = subprocess.run([sys.executable, "-c", script], env=hub.env(home, "alice"), capture_output=True, text=True)
    assert online.returncode == 0, online.stderr[-3000:]
    result = json.loads(online.stdout.strip().splitlines()[-1])
    assert result["class"].endswith("modeling_hf_gpt.HfGptForCausalLM") and not result["class"].startswith("hf_gpt")
    assert result["text"] == local_greedy(model_folder) and result["vocab"] == 700
    requests_before = len(hub.requests)
    offline = subprocess.run([sys.executable, "-c", script], env=hub.env(home, "alice", offline=True),
                             capture_output=True, text=True)  # fmt: skip
    assert offline.returncode == 0, offline.stderr[-3000:]
    assert json.loads(offline.stdout.strip().splitlines()[-1])["text"] == result["text"]
    assert len(hub.requests) == requests_before  # served from the cache alone


def test_private_push_to_a_branch(hub, model_folder, tmp_path):
    done = push(hub, tmp_path / "h", "alice", model_folder, "alice/secret", "--private", "--revision", "dev")
    assert done.returncode == 0, done.stderr[-3000:]
    api = HfApi(endpoint=hub.endpoint, token=hub.token("alice"))
    assert api.model_info("alice/secret").private
    assert "model.safetensors" in api.list_repo_files("alice/secret", revision="dev")
    assert "model.safetensors" not in api.list_repo_files("alice/secret")  # main untouched
    assert not HfApi(endpoint=hub.endpoint, token=hub.token("bob")).repo_exists("alice/secret")


def test_push_without_permission_says_so_and_changes_nothing(hub, model_folder, tmp_path):
    before = fingerprint(model_folder)
    done = push(hub, tmp_path / "h", "bob", model_folder, "alice/tiny-gpt")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "refused to let this token write to alice/tiny-gpt (HTTP 403)" in done.stderr
    assert hub.token("bob") not in done.stderr
    assert fingerprint(model_folder) == before


def test_a_connection_lost_mid_upload_is_reported_and_changes_nothing(hub, model_folder, tmp_path):
    before = fingerprint(model_folder)
    hub.fail_next_commit = True
    done = push(hub, tmp_path / "h", "alice", model_folder, "alice/tiny-gpt")
    assert done.returncode == 2 and "pushing" in done.stderr and "failed" in done.stderr
    assert f"{model_folder} is unchanged" in done.stderr and "Traceback" not in done.stderr
    assert fingerprint(model_folder) == before
    files = HfApi(endpoint=hub.endpoint, token=hub.token("alice")).list_repo_files("alice/tiny-gpt")
    assert "model.safetensors" not in files  # nothing half-committed


def test_folders_that_would_not_load_are_refused(tmp_path, model_folder):
    from hf_gpt.hub.push import push as push_folder

    (model_folder / "modeling_hf_gpt.py").unlink()
    with pytest.raises(FileNotFoundError, match="auto_map needs modeling_hf_gpt.py"):
        push_folder(model_folder, "alice/x")
    with pytest.raises(ValueError, match="repo id must look like ORG/NAME"):
        push_folder(model_folder, "no-namespace")
    torch.save({}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no safetensors weights"):
        push_folder(tmp_path, "alice/x")


def test_convert_straight_from_the_hub_and_push_without_local_paths(hub, tmp_path):
    from test_conversion import IDS, random_gpt2, save_gpt2

    reference = random_gpt2()
    api = HfApi(endpoint=hub.endpoint, token=hub.token("alice"))
    api.create_repo("alice/gpt2-small")
    api.upload_folder(repo_id="alice/gpt2-small", folder_path=save_gpt2(reference, tmp_path / "gpt2", "single"))
    converted = tmp_path / "converted"
    command = [sys.executable, "-m", "hf_gpt.conversion.gpt2", "import", "alice/gpt2-small", converted]
    env = hub.env(tmp_path / "home", "alice")
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ours = HfGptForCausalLM.from_pretrained(converted).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(IDS).logits, reference(IDS).logits, rtol=0, atol=1e-5)
    assert "base_model: alice/gpt2-small" in (converted / "README.md").read_text()

    # A card naming a local folder as base_model (a fine-tune of a local run) goes up without it.
    text = (converted / "README.md").read_text().replace("base_model: alice/gpt2-small", f"base_model: {tmp_path}")
    (converted / "README.md").write_text(text)
    assert push(hub, tmp_path / "h", "alice", converted, "alice/converted").returncode == 0
    pushed = hub.read("alice/converted", "README.md").decode()
    assert "base_model" not in pushed.split("---")[1] and str(tmp_path) not in pushed


def test_push_sends_only_what_a_model_repo_needs(hub, model_folder, tmp_path, push_here, capsys):
    model_files = {p.name for p in model_folder.iterdir()}
    add_run_clutter(model_folder, tmp_path / "passwd")
    push_here(model_folder, "alice/tiny-gpt")
    files = set(HfApi(endpoint=hub.endpoint, token=hub.token("alice")).list_repo_files("alice/tiny-gpt"))
    assert files == model_files | {"README.md", ".gitattributes"}  # .gitattributes: the Hub's first commit
    out = capsys.readouterr().out
    line = left_out_line(out)
    for name in ("checkpoints/ (2 files)", "finetune_args.json", "hf_token.txt", "logs/train.jsonl", "model.pt",
                 "notes.txt", "pytorch_model.bin", "secrets.yaml", "--include PATTERN"):  # fmt: skip
        assert name in line
    assert ".env" not in line and "hf_not_for_the_hub" not in out and hub.token("alice") not in out


def test_push_refuses_a_link_out_of_the_folder(hub, model_folder, tmp_path, push_here):
    outside = tmp_path / "passwd"
    add_run_clutter(model_folder, outside)
    link = model_folder / "chat_template.jinja"  # an allow-listed name
    link.symlink_to(outside)
    with pytest.raises(ValueError, match=re.escape(f"{link} is a symlink to {outside}, outside {model_folder}")):
        push_here(model_folder, "alice/tiny-gpt")
    link.unlink()
    (model_folder / "logs" / "other.jsonl").symlink_to(outside)  # an included file obeys the same rule
    with pytest.raises(ValueError, match="other.jsonl is a symlink to .*passwd"):
        push_here(model_folder, "alice/tiny-gpt", include=["logs/*.jsonl"])
    assert not [r for r in hub.requests if r.startswith("POST")]  # nothing pushed, no repo created


def test_include_adds_files_but_never_pickles(hub, model_folder, tmp_path, push_here, capsys):
    add_run_clutter(model_folder, tmp_path / "passwd")
    (model_folder / "logs" / "latest.jsonl").symlink_to("train.jsonl")  # a link inside: pushed as its target
    push_here(model_folder, "alice/tiny-gpt", include=["logs/*.jsonl", "*.bin", "*.pt"])
    files = set(HfApi(endpoint=hub.endpoint, token=hub.token("alice")).list_repo_files("alice/tiny-gpt"))
    assert {"logs/train.jsonl", "logs/latest.jsonl", "model.safetensors"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt"))]
    assert hub.read("alice/tiny-gpt", "logs/latest.jsonl") == (model_folder / "logs" / "train.jsonl").read_bytes()
    line = left_out_line(capsys.readouterr().out)
    assert "never hidden or pickled" in line and "pytorch_model.bin" in line and "logs" not in line


def test_a_long_left_out_list_is_cut_and_counted():
    from hf_gpt.hub.push import summary

    names = [f"checkpoints/step-{i}/optimizer.bin" for i in range(50)] + [f"notes-{i:02}.txt" for i in range(12)]
    shown = ", ".join(f"notes-{i:02}.txt" for i in range(9))
    assert summary(names) == f"checkpoints/ (50 files), {shown}, and 3 more"
