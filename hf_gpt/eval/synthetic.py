"""GPT-3's synthetic few-shot tasks (Brown et al. 2020, sections 3.9.1 and 3.9.2), generated locally from a seed.

The paper's formats, so scores compare with its tables:

    arithmetic-2d+ .. -5d+   Q: What is 48 plus 76? A: 124            n-digit operands, uniform in [10^(n-1), 10^n)
    arithmetic-2d- .. -5d-   Q: What is 34 minus 53? A: -19           negative results allowed
    arithmetic-2dx           Q: What is 24 times 99? A: 2376
    arithmetic-1dc           Q: What is 6+(4*8)? A: 38                three digits 0-9, + - *, one pair in parentheses
    cycle-letters            lyinevitab = inevitably                  rotated by a random non-zero offset
    anagrams-1               rpccoaeril = reciprocal                  all but the first and last letter shuffled
    anagrams-2               opeopnnt = opponent                      all but the first two and last two shuffled
    random-insertion         s.u!c/c!e.s s i/o/n = succession         punctuation or a space between letters
    reversed-words           stcejbo = objects

The word tasks show the paper's instruction once, as the task description ("Please unscramble the letters
into a word, and write that word:"), rather than repeating it in every example as lm-evaluation-harness's
`unscramble` data does; their words come from a text file the user gives, since no word list ships here.
Within a task no question is asked twice, so no test question reappears among the train examples (shots).
"""

from __future__ import annotations

import operator
import random
import re
import string
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from ..files import read_text_file
from .fewshot import COMPLETION, FewShotTask

# The paper scored 2000 test examples per arithmetic task and 10,000 per word task; these keep a CPU run short.
DEFAULT_TEST_SIZE, DEFAULT_TRAIN_SIZE = 200, 50

UNSCRAMBLE_INSTRUCTION = "Please unscramble the letters into a word, and write that word:"
MIN_WORD_LENGTH = 4

# The operation of each two-operand task, and its operands' digit count.
_TWO_OPERAND_TASKS = {
    **{f"arithmetic-{digits}d{sign}": (digits, sign) for digits in (2, 3, 4, 5) for sign in "+-"},
    "arithmetic-2dx": (2, "x"),
}
_OPERATIONS = {"+": ("plus", operator.add), "-": ("minus", operator.sub), "x": ("times", operator.mul)}
_COMPOSITE_OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
# "=" is left out: "a=b =" would blur where the scrambled word ends.
_INSERTED_CHARACTERS = string.punctuation.replace("=", "") + " "
_SHUFFLE_TRIES = 10
_WORD_EDGES = re.compile(r"^[\W_]+|[\W_]+$")  # punctuation around a word, "«" and "»" included


def cycle_letters(word: str, rng: random.Random) -> str:
    """The word rotated by a random offset among those that change it (every non-zero one, unless it repeats)."""
    offsets = [k for k in range(1, len(word)) if word[k:] + word[:k] != word]
    if not offsets:
        raise ValueError(f"no rotation changes {word!r}: it needs at least two different letters")
    k = rng.choice(offsets)
    return word[k:] + word[:k]


def anagram(word: str, rng: random.Random, keep: int) -> str:
    """The word with all but its first `keep` and last `keep` letters shuffled into a different order."""
    middle = word[keep:-keep]
    if len(set(middle)) < 2:
        raise ValueError(f"{word!r} has no anagram keeping {keep} letter(s) at each end: its middle is {middle!r}")
    letters = list(middle)
    for _ in range(_SHUFFLE_TRIES):
        rng.shuffle(letters)
        if "".join(letters) != middle:
            break
    else:  # every draw gave the word back; rotating a middle of two or more different letters changes it
        letters = letters[1:] + letters[:1]
    return word[:keep] + "".join(letters) + word[-keep:]


def random_insertion(word: str, rng: random.Random) -> str:
    """One random punctuation character or space between each pair of neighbouring letters."""
    return word[0] + "".join(rng.choice(_INSERTED_CHARACTERS) + letter for letter in word[1:])


def reverse_word(word: str, rng: random.Random) -> str:
    """The word backwards; `rng` is unused, so every scramble has one signature."""
    return word[::-1]


def _has_two_letters(text: str) -> bool:
    return len(set(text)) >= 2


# Each word task's scramble, and which words it can turn into something different from the word.
_WORD_TASKS: dict[str, tuple[Callable[[str, random.Random], str], Callable[[str], bool]]] = {
    "cycle-letters": (cycle_letters, _has_two_letters),
    "anagrams-1": (partial(anagram, keep=1), lambda word: _has_two_letters(word[1:-1])),
    "anagrams-2": (partial(anagram, keep=2), lambda word: _has_two_letters(word[2:-2])),
    "random-insertion": (random_insertion, lambda word: True),
    "reversed-words": (reverse_word, lambda word: word != word[::-1]),
}

TASK_NAMES = (*_TWO_OPERAND_TASKS, "arithmetic-1dc", *_WORD_TASKS)


def _question(expression: str, value: int) -> dict[str, Any]:
    return {"prompt": f"Q: What is {expression}? A:", "target": str(value)}


def _two_operand_question(rng: random.Random, digits: int, sign: str) -> dict[str, Any]:
    low, high = 10 ** (digits - 1), 10**digits
    a, b = rng.randrange(low, high), rng.randrange(low, high)
    word, apply = _OPERATIONS[sign]
    return _question(f"{a} {word} {b}", apply(a, b))


def _composite_question(rng: random.Random) -> dict[str, Any]:
    """Three digits and two operations, the parentheses around the first pair or the last, as "6+(4*8)"."""
    a, b, c = (rng.randrange(10) for _ in range(3))
    first, second = rng.choice("+-*"), rng.choice("+-*")
    apply_first, apply_second = _COMPOSITE_OPERATIONS[first], _COMPOSITE_OPERATIONS[second]
    if rng.randrange(2):
        return _question(f"({a}{first}{b}){second}{c}", apply_second(apply_first(a, b), c))
    return _question(f"{a}{first}({b}{second}{c})", apply_first(a, apply_second(b, c)))


def _question_count(name: str) -> int:
    """How many distinct questions an arithmetic task has: the most examples it can give without repeats."""
    if name == "arithmetic-1dc":
        return 10**3 * 3**2 * 2  # digits, operations, parenthesis placement
    digits, _ = _TWO_OPERAND_TASKS[name]
    return (9 * 10 ** (digits - 1)) ** 2


def _arithmetic_questions(name: str, rng: random.Random) -> Iterator[dict[str, Any]]:
    """An endless stream of random questions (repeats included) for the task."""
    while True:
        if name == "arithmetic-1dc":
            yield _composite_question(rng)
        else:
            yield _two_operand_question(rng, *_TWO_OPERAND_TASKS[name])


def read_words(path: str | Path) -> list[str]:
    """The file's words of at least MIN_WORD_LENGTH ASCII letters, lower-cased, each once, in first-seen order.

    Whitespace separates words and punctuation around one is stripped ("(Hello)," gives "hello"); a token
    with anything else in it ("don't", "café", "x2") is dropped rather than cut into pieces that are no words.
    """
    words: dict[str, None] = {}
    for token in read_text_file(path, "word list").split():
        word = _WORD_EDGES.sub("", token).lower()
        if len(word) >= MIN_WORD_LENGTH and word.isascii() and word.isalpha():
            words.setdefault(word)
    return list(words)


def _word_puzzles(name: str, words: list[str], rng: random.Random) -> Iterator[dict[str, Any]]:
    """The words in a random order, each scrambled: "<scrambled> =", answered by the word."""
    scramble, _ = _WORD_TASKS[name]
    for word in rng.sample(words, len(words)):
        yield {"prompt": f"{scramble(word, rng)} =", "target": word}


def _usable_words(name: str, words_file: str | Path | None, needed: int) -> list[str]:
    """The file's words that the task can scramble, checked to be enough for `needed` examples."""
    if words_file is None:
        raise ValueError(f"task {name!r} needs a word list: give a text file with --words FILE")
    _, usable = _WORD_TASKS[name]
    words = [word for word in read_words(words_file) if usable(word)]
    if len(words) < needed:
        raise ValueError(
            f"{words_file} gives {len(words)} usable words for {name!r} (ASCII letters only, at least "
            f"{MIN_WORD_LENGTH} long, and changed by the scramble); the requested examples need {needed}"
        )
    return words


def _first_distinct(examples: Iterator[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The first `count` examples whose prompts differ, or fewer if the stream runs out."""
    seen: set[str] = set()
    distinct: list[dict[str, Any]] = []
    for example in examples:
        if len(distinct) == count:
            break
        if example["prompt"] not in seen:
            seen.add(example["prompt"])
            distinct.append(example)
    return distinct


def _check_sizes(test_size: int, train_size: int) -> None:
    if isinstance(test_size, bool) or not isinstance(test_size, int) or test_size < 1:
        raise ValueError(f"test_size must be an integer >= 1, got {test_size!r}")
    if isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 0:
        raise ValueError(f"train_size must be an integer >= 0, got {train_size!r}")


def make_task(
    name: str,
    *,
    test_size: int = DEFAULT_TEST_SIZE,
    train_size: int = DEFAULT_TRAIN_SIZE,
    seed: int = 0,
    words_file: str | Path | None = None,
) -> FewShotTask:
    """A completion task of `test_size` test and `train_size` train examples, the same for the same seed.

    Word tasks draw their words from `words_file`; arithmetic tasks ignore it, so one option can serve a run
    over many tasks. The seed is combined with the name, so tasks do not share one random stream.
    """
    if name not in TASK_NAMES:
        raise ValueError(f"unknown synthetic task {name!r}; choose one of {', '.join(TASK_NAMES)}")
    _check_sizes(test_size, train_size)
    needed = test_size + train_size
    rng = random.Random(f"{name}:{seed}")  # a str seed is hashed stably: the same examples in every process
    if name in _WORD_TASKS:
        examples = _first_distinct(_word_puzzles(name, _usable_words(name, words_file, needed), rng), needed)
        if len(examples) < needed:  # two words scrambled alike: rare, and only with a list barely big enough
            raise ValueError(f"{words_file} gives {len(examples)} distinct {name!r} puzzles; {needed} are needed")
    else:
        if needed > _question_count(name):
            raise ValueError(
                f"task {name!r} has {_question_count(name)} distinct questions, fewer than "
                f"test_size + train_size = {needed}"
            )
        examples = _first_distinct(_arithmetic_questions(name, rng), needed)
    description = UNSCRAMBLE_INSTRUCTION if name in _WORD_TASKS else ""
    return FewShotTask(name, COMPLETION, examples[:test_size], examples[test_size:], description)
