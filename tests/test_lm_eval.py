"""lm-evaluation-harness runs our model folders (`--model hf ... trust_remote_code=True`) offline, from tasks
that `hf-gpt eval export-lm-eval` writes, and scores them as `hf_gpt.eval.scoring` does."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TEXT, seeded, tiny_config

from hf_gpt import HfGptForCausalLM
from hf_gpt.eval.fewshot import COMPLETION, MULTIPLE_CHOICE, FewShotTask, build_prompt
from hf_gpt.eval.lm_eval_export import export_lm_eval_task
from hf_gpt.eval.scoring import evaluate_task, greedy_completions, log_likelihoods, perplexity

pytestmark = pytest.mark.lm_eval
pytest.importorskip("lm_eval", reason="needs lm-eval (pip install '.[dev]')")

CONTEXTS = ["The fox", "A dog", "It was", "The model", "GPT models", "A language"]
MC = [{"context": c, "choices": ["jumps", "sleeps", "is"], "answer": i % 3} for i, c in enumerate(CONTEXTS)]
DOCUMENTS = [" ".join(TEXT[:5]), TEXT[1] * 3]
ROLLING_YAML = """\
task: hfgpt_documents
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
"""


@pytest.fixture(scope="module")
def harness_run(tmp_path_factory, tokenizer):
    """One lm_eval run over three tasks, with the model, our own figures and lm-eval's samples."""
    root = tmp_path_factory.mktemp("lm_eval")
    config = tiny_config(vocab_size=len(tokenizer), max_position_embeddings=64, eos_token_id=0, bos_token_id=0)
    model = seeded(HfGptForCausalLM, config, seed=1)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")

    tasks = root / "tasks"
    # A description with braces: lm-eval renders it with Jinja, the export must keep them literal.
    multiple_choice = FewShotTask("choices", MULTIPLE_CHOICE, test=MC, train=MC, description="Pick {{ one }}:")
    prompts = ["The quick brown", "It was the", "A language model"]
    outputs = greedy_completions(model, tokenizer, prompts, max_new_tokens=8)
    targets = [outputs[0].strip(), "not this", outputs[2].strip()]  # two right, one wrong
    completion = FewShotTask(
        "completion", COMPLETION, test=[{"prompt": p, "target": t} for p, t in zip(prompts, targets, strict=True)]
    )
    export_lm_eval_task(multiple_choice, tasks)
    export_lm_eval_task(completion, tasks, max_gen_toks=8)
    (tasks / "documents.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCUMENTS))
    (tasks / "documents.yaml").write_text(ROLLING_YAML.format(data=tasks / "documents.jsonl"))

    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(root / "hf_home")}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lm_eval"), "--model", "hf",
         "--model_args", f"pretrained={root / 'model'},trust_remote_code=True", "--device", "cpu",
         "--include_path", str(tasks), "--tasks", "hfgpt_choices,hfgpt_completion,hfgpt_documents",
         "--output_path", str(root / "out"), "--log_samples"],
        capture_output=True, text=True, env={**os.environ, **offline}, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    samples = {}
    for path in (root / "out").rglob("samples_*.jsonl"):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        samples[task] = [json.loads(line) for line in path.read_text().splitlines()]
    (results_file,) = (root / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]
    return dict(model=model, tasks=(multiple_choice, completion), outputs=outputs, samples=samples, results=results)


def test_multiple_choice_scores_match(harness_run, tokenizer):
    model, (task, _) = harness_run["model"], harness_run["tasks"]
    ours = evaluate_task(model, tokenizer, task, 0).metrics
    theirs = harness_run["results"]["hfgpt_choices"]
    assert theirs["acc,none"] == pytest.approx(ours["acc"])
    assert theirs["acc_norm,none"] == pytest.approx(ours["acc_norm"])
    for sample in sorted(harness_run["samples"]["hfgpt_choices"], key=lambda s: s["doc_id"]):
        pairs = [(a["arg_0"], a["arg_1"]) for a in sample["arguments"].values()]
        prompt = build_prompt(task, sample["doc"], [])
        assert pairs == [(prompt, " " + c) for c in sample["doc"]["choices"]]  # the same prompts
        scores = [float(r[0][0]) for r in sample["resps"]]
        assert scores == pytest.approx([s.log_likelihood for s in log_likelihoods(model, tokenizer, pairs)], abs=1e-4)


def test_generations_and_exact_match_agree(harness_run, tokenizer):
    model, (_, task) = harness_run["model"], harness_run["tasks"]
    ours = evaluate_task(model, tokenizer, task, 0, max_new_tokens=8).metrics
    assert ours == {"exact_match": pytest.approx(2 / 3)}
    assert harness_run["results"]["hfgpt_completion"]["exact_match,strip"] == pytest.approx(2 / 3)
    theirs = {s["doc"]["prompt"]: s["resps"][0][0] for s in harness_run["samples"]["hfgpt_completion"]}
    prompts = [r["prompt"] for r in task.test]
    assert [theirs[p] for p in prompts] == harness_run["outputs"]


def test_rolling_log_likelihood_equals_disjoint_window_perplexity(harness_run, tokenizer):
    ours = perplexity(harness_run["model"], tokenizer, DOCUMENTS, block_size=64, stride=64)
    theirs = harness_run["results"]["hfgpt_documents"]["bits_per_byte,none"]
    assert theirs == pytest.approx(ours.bits_per_byte, rel=1e-5)
