"""Evaluation: strided perplexity against a token-by-token computation, and few-shot scoring."""

import json
import math
import random

import pytest
import torch
from conftest import TEXT, seeded, tiny_config
from hf_gpt.conversion.gpt2 import export_gpt2
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_gpt import HfGptForCausalLM
from hf_gpt.cli import main
from hf_gpt.eval.fewshot import COMPLETION, MULTIPLE_CHOICE, FewShotTask, build_prompt, choose_shots, read_task
from hf_gpt.eval.scoring import (
    ScoreRequest,
    encode_pair,
    evaluate_task,
    greedy_completions,
    log_likelihoods,
    perplexity,
    score,
    sliding_windows,
)
from hf_gpt.generation.loading import load_causal_lm

DOCUMENT = " ".join(TEXT[:5])


@pytest.fixture(scope="module")
def model(tokenizer):
    config = tiny_config(vocab_size=len(tokenizer), max_position_embeddings=64, eos_token_id=0, bos_token_id=0)
    return seeded(HfGptForCausalLM, config, seed=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model, tokenizer):
    folder = tmp_path_factory.mktemp("evaluation") / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def last_log_probs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)


@settings(max_examples=60, deadline=None)
@given(length=st.integers(2, 80), block=st.integers(1, 16), data=st.data())
def test_windows_predict_every_token_once_within_the_block(length, block, data):
    stride = data.draw(st.integers(1, block))
    ids = list(range(length))
    windows = sliding_windows(ids, block, stride)
    predicted = [t for w in windows for t in w.tokens[-w.scored :]]
    assert predicted == ids[1:]  # each token once, in order; the prefix (ids[0]) never
    for index, window in enumerate(windows):
        assert len(window.tokens) - 1 <= block  # the model's input fits the block
        if index:  # after the first window, new tokens see block + 1 - stride tokens, or all there are
            first_new = window.tokens[-window.scored]
            assert len(window.tokens) - window.scored >= min(block + 1 - stride, first_new)


def test_bad_window_settings_are_named():
    with pytest.raises(ValueError, match="stride must be in"):
        sliding_windows([0, 1, 2], 4, 5)
    with pytest.raises(ValueError, match="block_size must be at least 1"):
        sliding_windows([0, 1, 2], 0, 1)


@pytest.mark.parametrize("block", [8, 64])
def test_stride_one_equals_a_token_by_token_computation(model, tokenizer, block):
    ids = [tokenizer.eos_token_id, *tokenizer(DOCUMENT, add_special_tokens=False)["input_ids"]]
    assert len(ids) > 2 * block or block == 64  # several windows for the small block
    naive = -sum(last_log_probs(model, ids[max(0, j - block) : j])[ids[j]].item() for j in range(1, len(ids)))
    result = perplexity(model, tokenizer, [DOCUMENT], block_size=block, stride=1, batch_size=5)
    assert result.tokens == len(ids) - 1
    assert result.nll == pytest.approx(naive, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(naive / (len(ids) - 1)), rel=1e-5)
    assert result.bits_per_byte == pytest.approx(naive / math.log(2) / len(DOCUMENT.encode()), rel=1e-5)
    assert result.nats_per_char == pytest.approx(naive / len(DOCUMENT), rel=1e-5)


def test_disjoint_windows_lose_context_and_documents_add_up(model, tokenizer):
    full = perplexity(model, tokenizer, [DOCUMENT], block_size=64, stride=64)
    one_window = perplexity(model, tokenizer, [DOCUMENT[:150]], block_size=64, stride=64)
    chopped = perplexity(model, tokenizer, [DOCUMENT], block_size=8, stride=8)
    assert chopped.tokens == full.tokens and chopped.nll != pytest.approx(full.nll, rel=1e-3)
    both = perplexity(model, tokenizer, [DOCUMENT, DOCUMENT[:150]], block_size=64, stride=64)
    assert both.nll == pytest.approx(full.nll + one_window.nll, rel=1e-5)
    assert both.tokens == full.tokens + one_window.tokens


def test_batching_and_padding_do_not_change_scores(model):
    requests = [ScoreRequest(list(range(5, 5 + n)), k) for n, k in ((12, 3), (4, 1), (30, 29), (7, 6))]
    alone = score(model, requests, batch_size=1)
    together = score(model, requests, batch_size=4)
    for a, b in zip(alone, together, strict=True):
        assert a.log_likelihood == pytest.approx(b.log_likelihood, abs=1e-4) and a.greedy == b.greedy


def test_answer_scores_are_conditional_log_probabilities(model, tokenizer):
    context, answer = "The quick brown", " fox jumps"
    context_ids, answer_ids = encode_pair(tokenizer, context + " ", answer.lstrip())  # the space moves over
    assert context_ids == tokenizer(context)["input_ids"]
    assert context_ids + answer_ids == tokenizer(context + answer)["input_ids"]
    expected, greedy = 0.0, True
    for i, token in enumerate(answer_ids):
        log_probs = last_log_probs(model, context_ids + answer_ids[:i])
        expected += log_probs[token].item()
        greedy &= log_probs.argmax().item() == token
    (result,) = log_likelihoods(model, tokenizer, [(context, answer)])
    assert result.log_likelihood == pytest.approx(expected, rel=1e-5)
    assert result.greedy == greedy and result.tokens == len(answer_ids)


def test_greedy_completions_match_generate_and_stop_at_a_newline(model, tokenizer):
    prompts = ["The quick brown", "It was", "A language model predicts the next"]
    outputs = greedy_completions(model, tokenizer, prompts, max_new_tokens=10, stop=(), batch_size=3)
    for prompt, output in zip(prompts, outputs, strict=True):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        alone = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=10)
        assert output == tokenizer.decode(alone[0, ids.shape[1] :], skip_special_tokens=True)
    stop = outputs[0][4:6]
    cut = greedy_completions(model, tokenizer, prompts, max_new_tokens=10, stop=(stop,))
    assert cut[0] == outputs[0].split(stop, 1)[0] and len(cut[0]) <= 4


MC_EXAMPLES = [
    {"context": f"{a} {b}", "choices": [" jumps", " sleeps", " is"], "answer": i % 3}
    for i, (a, b) in enumerate([("The", "fox"), ("A", "dog"), ("It", "was"), ("The", "model"), ("GPT", "models")])
]


def multiple_choice(answer_shift: int, train: int = 4) -> FewShotTask:
    test = [{**r, "answer": (r["answer"] + answer_shift) % 3} for r in MC_EXAMPLES]
    return FewShotTask("mc", MULTIPLE_CHOICE, test=test, train=test[:train])


def test_multiple_choice_accuracy_can_fail(model, tokenizer):
    """Shifting every answer through all three choices: the three accuracies add up to exactly 1."""
    totals = {"acc": 0.0, "acc_norm": 0.0, "acc_token_norm": 0.0}
    for shift in range(3):
        metrics = evaluate_task(model, tokenizer, multiple_choice(shift), 0).metrics
        for name in totals:
            totals[name] += metrics[name]
    assert totals == pytest.approx({name: 1.0 for name in totals})


def test_completion_exact_match_counts_right_and_wrong(model, tokenizer):
    prompts = ["The quick brown", "It was the best"]
    outputs = greedy_completions(model, tokenizer, prompts, max_new_tokens=6, stop=("\n",))
    assert all(o.strip() for o in outputs)
    test = [{"prompt": prompts[0], "target": outputs[0].strip()}, {"prompt": prompts[1], "target": "certainly not"}]
    task = FewShotTask("completion", COMPLETION, test=test, target_delimiter="")
    assert evaluate_task(model, tokenizer, task, 0, max_new_tokens=6).metrics == {"exact_match": 0.5}


def test_prompts_join_description_shots_and_context():
    task = FewShotTask("t", COMPLETION, test=[{"prompt": "Q: 3? A:", "target": "3"}], description="Copy.")
    shots = [{"prompt": "Q: 1? A:", "target": "1"}, {"prompt": "Q: 2? A:", "target": "2"}]
    assert build_prompt(task, task.test[0], shots) == "Copy.\n\nQ: 1? A: 1\n\nQ: 2? A: 2\n\nQ: 3? A:"


def test_shots_are_drawn_reproducibly_from_the_train_split():
    task = FewShotTask("t", COMPLETION, test=[], train=[{"prompt": str(i), "target": "x"} for i in range(20)])
    assert choose_shots(task, 5, seed=0, index=3) == choose_shots(task, 5, seed=0, index=3)
    assert choose_shots(task, 5, seed=0, index=3) != choose_shots(task, 5, seed=1, index=3)
    assert choose_shots(task, 5, seed=0, index=3) != choose_shots(task, 5, seed=0, index=4)
    with pytest.raises(ValueError, match="21-shot needs 21 train examples"):
        choose_shots(task, 21, seed=0, index=0)


def write_lines(path, records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


@pytest.mark.parametrize(
    "records, message",
    [
        (["{not json"], r"t.jsonl:1: not valid JSON"),
        ([{"context": "a", "choices": ["x", "y"]}], r"t.jsonl:1: an example needs context \+ choices \+ answer"),
        ([{"context": "a", "choices": ["x", "y"], "answer": 2}], r"t.jsonl:1: answer must be an index"),
        ([{"context": "a", "choices": ["x"], "answer": 0}], "choices must be a list of at least two non-empty"),
        ([{"context": "a", "choices": ["x", ""], "answer": 0}], "choices must be a list of at least two non-empty"),
        ([{"prompt": "a", "target": " "}], "target a non-blank string"),
        ([{"prompt": "a", "target": " 124"}], "has surrounding whitespace"),
        ([{"prompt": "a", "target": "b", "split": "dev"}], "split must be 'train' or 'test'"),
        ([{"prompt": "a", "target": "b", "split": "train"}], "has no test examples"),
        ([{"prompt": "a", "target": "b"}, {"context": "a", "choices": ["x", "y"], "answer": 0}], "mixes"),
    ],
)
def test_bad_task_files_are_named(tmp_path, records, message):
    with pytest.raises(ValueError, match=message):
        read_task(write_lines(tmp_path / "t.jsonl", records))


def test_cli_perplexity_prints_and_writes_the_figures(model_dir, model, tokenizer, tmp_path, capsys):
    text = tmp_path / "doc.txt"
    text.write_text(DOCUMENT, encoding="utf-8")
    assert main(["eval", "perplexity", str(model_dir), str(text), "--block-size", "16", "--stride", "4",
                 "--output", str(tmp_path / "ppl.json")]) == 0  # fmt: skip
    written = json.loads((tmp_path / "ppl.json").read_text())
    expected = perplexity(model, tokenizer, [DOCUMENT], block_size=16, stride=4)
    assert written["perplexity"] == pytest.approx(expected.perplexity, rel=1e-5)
    assert f"perplexity {expected.perplexity:.3f}" in capsys.readouterr().out


def test_cli_fewshot_on_a_task_file_and_a_builtin_task(model_dir, tmp_path, capsys, monkeypatch):
    records = [{**r, "split": "train"} for r in MC_EXAMPLES] + MC_EXAMPLES
    task_file = write_lines(tmp_path / "mc.jsonl", records)
    out = tmp_path / "mc.json"
    assert main(["eval", "fewshot", str(model_dir), task_file, "--shots", "0,2", "--output", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"0-shot", "2-shot"} and results["2-shot"]["examples"] == len(MC_EXAMPLES)
    assert "| 2-shot | 5 |" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "fewshot", str(model_dir), "--task", "arithmetic-2d+", "--shots", "1", "--limit", "3"]) == 0
    assert json.loads((tmp_path / "fewshot-arithmetic-2d+.json").read_text())["results"]["1-shot"]["examples"] == 3


def test_any_causal_lm_folder_scores_alike(model_dir, model, tokenizer, tmp_path):
    """The same weights as transformers' GPT2LMHeadModel (exported, no custom code) give the same figures."""
    gpt2, gpt2_tokenizer = load_causal_lm(export_gpt2(str(model_dir), str(tmp_path / "gpt2")))
    assert type(gpt2).__name__ == "GPT2LMHeadModel"
    ours = perplexity(model, tokenizer, [DOCUMENT], block_size=16, stride=4)
    theirs = perplexity(gpt2, gpt2_tokenizer, [DOCUMENT], block_size=16, stride=4)
    assert (theirs.tokens, theirs.nll) == (ours.tokens, pytest.approx(ours.nll, rel=1e-5))
    task = multiple_choice(0)
    assert evaluate_task(gpt2, gpt2_tokenizer, task, 2).metrics == evaluate_task(model, tokenizer, task, 2).metrics


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["fewshot", "{model}", "nonesuch"], "neither a task file"),
        (["fewshot", "{model}"], "name the task once"),
        (["fewshot", "{model}", "arithmetic-2d+", "--task", "arithmetic-2d-"], "name the task once"),
        (["fewshot", "{model}", "arithmetic-2d+", "--shots", "0,x"], "--shots must be comma-separated"),
        (["fewshot", "{model}", "arithmetic-2d+", "--shots", "51"], "51-shot needs 51 train examples"),
        (["fewshot", "{model}", "reversed-words"], "--words FILE"),
        (["perplexity", "{model}", "missing.txt"], "missing.txt does not exist"),
        (["perplexity", "{model}", "{text}", "--stride", "99", "--block-size", "8"], "stride must be in"),
        (["perplexity", "{model}", "{text}", "--block-size", "99"], "exceeds the model's context of 64"),
    ],
)
def test_cli_bad_input_is_named(model_dir, tmp_path, capsys, arguments, message):
    text = tmp_path / "doc.txt"
    text.write_text(DOCUMENT)
    filled = [a.format(model=model_dir, text=text) for a in arguments]
    assert main(["eval", *filled]) == 2
    assert message in capsys.readouterr().err


KEYS, LABELS = ["apple", "river", "stone", "cloud"], ["red", "blue", "green", "gold"]


def label_documents(count: int, seed: int = 0) -> list[str]:
    """Documents of "key -> label" lines whose label is the same throughout one document: a label can be
    guessed only from the lines before (the shots), never from the key."""
    rng = random.Random(seed)
    documents = []
    for _ in range(count):
        label = rng.choice(LABELS)
        documents.append("\n\n".join(f"{rng.choice(KEYS)} -> {label}" for _ in range(6)))
    return documents


@pytest.mark.slow
def test_accuracy_rises_with_shots_on_a_model_trained_for_it(tmp_path):
    """Zero-shot, the model can only guess: over four tasks whose answers are each label in turn its
    accuracies add up to exactly 1. One shot shows the task's label, and a model trained on such
    documents copies it."""
    from hf_gpt.data.tokenizer import train_bpe_tokenizer

    documents = label_documents(2000)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(documents[:300]))
    tokenizer = train_bpe_tokenizer([corpus], 300, tmp_path / "tokenizer", show_progress=False)
    ids = torch.tensor([t for d in documents for t in tokenizer(d)["input_ids"] + [tokenizer.eos_token_id]])
    config = tiny_config(vocab_size=len(tokenizer), hidden_size=128, max_position_embeddings=64, initializer_range=0.02)
    torch.manual_seed(0)
    model = HfGptForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(300):
        starts = torch.randint(len(ids) - 33, (32,)).tolist()
        batch = torch.stack([ids[s : s + 32] for s in starts])
        model(batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()

    accuracy = {shots: [] for shots in (0, 1, 3)}
    for label in LABELS:
        examples = [{"context": f"{key} ->", "choices": LABELS, "answer": LABELS.index(label)} for key in KEYS]
        task = FewShotTask(label, MULTIPLE_CHOICE, test=examples * 3, train=examples)
        for shots in accuracy:
            accuracy[shots].append(evaluate_task(model, tokenizer, task, shots, seed=1).metrics["acc"])
    assert sum(accuracy[0]) == pytest.approx(1.0)  # zero-shot: one guess per key, right for one task only
    assert min(accuracy[1]) >= 0.9 and min(accuracy[3]) >= 0.9, accuracy


@pytest.mark.parametrize("option", ["--batch-size", "--limit"])
@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_cli_counts_must_be_positive(model_dir, capsys, option, value):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "fewshot", str(model_dir), "arithmetic-2d+", option, value])
    assert exit_.value.code == 2 and f"argument {option}: must be an integer >= 1" in capsys.readouterr().err


def test_an_answer_merging_into_its_context_is_named(model, tokenizer):
    context = "The quick brown fo"  # "x" completes the word "fox": it adds no token of its own
    assert len(tokenizer(context + "x")["input_ids"]) == len(tokenizer(context)["input_ids"])  # " fox" is one token
    with pytest.raises(ValueError, match="merges into the context's last token"):
        log_likelihoods(model, tokenizer, [(context, "x")])


def test_perplexity_counts_the_bytes_on_disk(tmp_path):
    from hf_gpt.eval.commands import read_texts

    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"one line\r\nanother line\r\n")
    (text,) = read_texts([crlf])
    assert len(text.encode()) == crlf.stat().st_size
