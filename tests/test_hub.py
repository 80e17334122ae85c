"""`hf-gpt push` and the Hub round trip, against the Hub-protocol server of hub_server.py (never the internet)."""

import hashlib
import json
import subprocess
import sys

import pytest
import torch
from conftest import WITHOUT_HF_GPT, seeded, tiny_config
from huggingface_hub import HfApi
from test_tokenizer import console_script

from hf_gpt import HfGptForCausalLM
from hf_gpt.training import sampling_defaults

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
    model.generation_config = sampling_defaults(model.config)
    model.save_pretrained(folder)
    trained_tokenizer.save_pretrained(folder)
    return folder


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
    from hf_gpt.hub import push as push_folder

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
