"""GPT-3's synthetic tasks: the paper's formats, correct answers, seeded and disjoint splits, the scrambles."""

import random
import re
import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from hf_gpt.eval.fewshot import COMPLETION, build_prompt
from hf_gpt.eval.synthetic import (
    DEFAULT_TEST_SIZE,
    DEFAULT_TRAIN_SIZE,
    TASK_NAMES,
    UNSCRAMBLE_INSTRUCTION,
    anagram,
    cycle_letters,
    make_task,
    random_insertion,
    read_words,
    reverse_word,
)

TWO_OPERAND = {
    **{f"arithmetic-{n}d{sign}": (n, {"+": "plus", "-": "minus"}[sign]) for n in (2, 3, 4, 5) for sign in "+-"},
    "arithmetic-2dx": (2, "times"),
}
WORD_TASKS = ["cycle-letters", "anagrams-1", "anagrams-2", "random-insertion", "reversed-words"]
TWO_OPERAND_PROMPT = re.compile(r"Q: What is (\d+) (plus|minus|times) (\d+)\? A:")
COMPOSITE_PROMPT = re.compile(r"Q: What is (\(\d[-+*]\d\)[-+*]\d|\d[-+*]\(\d[-+*]\d\))\? A:")
WORD_PROMPT = re.compile(r"(\S.*) =")
SMALL = {"test_size": 30, "train_size": 10}
words = st.text(alphabet=string.ascii_lowercase, min_size=4, max_size=15)


@pytest.fixture(scope="module")
def words_file(tmp_path_factory):
    """A few hundred made-up words among the kinds of token the reader must drop."""
    rng = random.Random(0)
    made_up = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(6, 12))) for _ in range(300)]
    path = tmp_path_factory.mktemp("words") / "words.txt"
    path.write_text(" ".join(made_up) + "\nthe cat, don't café x2 level noon aaaa\n", encoding="utf-8")
    return path


def all_examples(task):
    return task.test + task.train


def test_task_names_are_the_papers():
    assert set(TASK_NAMES) == {*TWO_OPERAND, "arithmetic-1dc", *WORD_TASKS}
    assert len(TASK_NAMES) == 15


@pytest.mark.parametrize("name", TWO_OPERAND)
def test_two_operand_format_digits_and_answer(name):
    digits, word = TWO_OPERAND[name]
    task = make_task(name, test_size=200, train_size=20)
    assert task.kind == COMPLETION and task.description == ""
    for example in all_examples(task):
        a, operation, b = TWO_OPERAND_PROMPT.fullmatch(example["prompt"]).groups()
        assert operation == word
        assert len(a) == len(b) == digits and a[0] != "0" and b[0] != "0"
        expected = {"plus": int(a) + int(b), "minus": int(a) - int(b), "times": int(a) * int(b)}[word]
        assert example["target"] == str(expected)
    if word == "minus":  # the paper keeps negative results
        assert any(example["target"].startswith("-") for example in task.test)


def test_paper_example_format():
    task = make_task("arithmetic-2d+", test_size=1, train_size=1)
    shot, example = task.train[0], task.test[0]
    prompt = build_prompt(task, example, [shot])
    assert re.fullmatch(r"Q: What is \d\d plus \d\d\? A: \d+\n\nQ: What is \d\d plus \d\d\? A:", prompt)


def test_composite_format_and_answer():
    task = make_task("arithmetic-1dc", test_size=300, train_size=0)
    expressions = []
    for example in task.test:
        expression = COMPOSITE_PROMPT.fullmatch(example["prompt"]).group(1)
        assert example["target"] == str(eval(expression))  # safe: the pattern admits only digits, + - * and ()
        expressions.append(expression)
    assert any(e.startswith("(") for e in expressions) and any(e.endswith(")") for e in expressions)
    assert all(any(sign in e for e in expressions) for sign in "+-*")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_seeded_disjoint_and_sized(name, words_file):
    task = make_task(name, seed=3, words_file=words_file, **SMALL)
    assert (len(task.test), len(task.train)) == (SMALL["test_size"], SMALL["train_size"])
    prompts = [example["prompt"] for example in all_examples(task)]
    assert len(set(prompts)) == len(prompts)  # no repeats, so no test question among the shots
    assert make_task(name, seed=3, words_file=words_file, **SMALL) == task
    assert make_task(name, seed=4, words_file=words_file, **SMALL).test != task.test


@pytest.mark.parametrize("name", WORD_TASKS)
def test_word_task_format(name, words_file):
    task = make_task(name, words_file=words_file, **SMALL)
    assert task.kind == COMPLETION and task.description == UNSCRAMBLE_INSTRUCTION
    targets = [example["target"] for example in all_examples(task)]
    assert len(set(targets)) == len(targets)
    for example in all_examples(task):
        scrambled = WORD_PROMPT.fullmatch(example["prompt"]).group(1)
        assert scrambled != example["target"]
        assert example["target"] in read_words(words_file)
    prompt = build_prompt(task, task.test[0], task.train[:1])
    shot = task.train[0]
    assert prompt == f"{UNSCRAMBLE_INSTRUCTION}\n\n{shot['prompt']} {shot['target']}\n\n{task.test[0]['prompt']}"


def test_default_sizes():
    task = make_task("arithmetic-3d-")
    assert (len(task.test), len(task.train)) == (DEFAULT_TEST_SIZE, DEFAULT_TRAIN_SIZE) == (200, 50)


@given(word=words, keep=st.sampled_from([1, 2]), seed=st.integers(0, 2**32))
def test_anagram_keeps_ends_and_permutes_the_middle(word, keep, seed):
    assume(len(set(word[keep:-keep])) >= 2)
    scrambled = anagram(word, random.Random(seed), keep)
    assert scrambled != word and sorted(scrambled) == sorted(word)
    assert scrambled[:keep] == word[:keep] and scrambled[-keep:] == word[-keep:]


@given(word=words, seed=st.integers(0, 2**32))
def test_cycle_is_a_rotation(word, seed):
    assume(len(set(word)) >= 2)
    scrambled = cycle_letters(word, random.Random(seed))
    assert scrambled != word and len(scrambled) == len(word) and scrambled in word + word


@given(word=words, seed=st.integers(0, 2**32))
def test_random_insertion_puts_one_character_between_letters(word, seed):
    scrambled = random_insertion(word, random.Random(seed))
    assert scrambled[::2] == word and len(scrambled) == 2 * len(word) - 1
    assert all(c in string.punctuation + " " and c != "=" for c in scrambled[1::2])
    assert "".join(c for c in scrambled if c.isalpha()) == word


def test_paper_examples_of_the_scrambles():
    assert reverse_word("objects", random.Random(0)) == "stcejbo"
    rotations = {cycle_letters("inevitably", random.Random(seed)) for seed in range(200)}
    assert "lyinevitab" in rotations and "inevitably" not in rotations and len(rotations) == 9


@pytest.mark.parametrize(
    "scramble, word",
    [
        (cycle_letters, "aaaa"),
        (lambda w, rng: anagram(w, rng, 1), "boot"),
        (lambda w, rng: anagram(w, rng, 2), "abcde"),
    ],
)
def test_unscramblable_words_are_refused(scramble, word):
    with pytest.raises(ValueError, match=word):
        scramble(word, random.Random(0))


def test_read_words_filters_and_deduplicates(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("Hello, world! hello WORLD don't café x2 cat ab-cd «Zebra» (banana).\nWorld\n", encoding="utf-8")
    assert read_words(path) == ["hello", "world", "zebra", "banana"]


def test_word_tasks_skip_words_they_cannot_scramble(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("level noon abcde boot aaaa objects\n", encoding="utf-8")
    expected = {"anagrams-1": 3, "anagrams-2": 1, "reversed-words": 3, "cycle-letters": 5, "random-insertion": 6}
    for name, usable in expected.items():
        task = make_task(name, test_size=usable, train_size=0, words_file=path)
        assert len(task.test) == usable
        with pytest.raises(ValueError, match=rf"gives {usable} usable words.*need {usable + 1}"):
            make_task(name, test_size=usable, train_size=1, words_file=path)


def test_arithmetic_needs_no_file():
    assert make_task("arithmetic-2dx", test_size=5, train_size=5).test


def test_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown synthetic task 'arithmetic-6d\+'.*arithmetic-2d\+.*reversed-words"):
        make_task("arithmetic-6d+")
    with pytest.raises(ValueError, match="--words FILE"):
        make_task("anagrams-1")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        make_task("anagrams-1", words_file=tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="test_size must be an integer >= 1, got 0"):
        make_task("arithmetic-2d+", test_size=0)
    with pytest.raises(ValueError, match="train_size must be an integer >= 0, got -1"):
        make_task("arithmetic-2d+", train_size=-1)
    with pytest.raises(ValueError, match="8100 distinct questions.*8101"):
        make_task("arithmetic-2d+", test_size=8100, train_size=1)


def test_anagram_differs_even_when_every_shuffle_gives_the_word_back():
    class NoShuffle(random.Random):
        def shuffle(self, x):
            pass

    assert anagram("reciprocal", NoShuffle(0), 1) == "rciprocael"
