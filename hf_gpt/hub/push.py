"""`hf-gpt push`: a model folder to the Hub (or whatever HF_ENDPOINT names) in one commit.

The token comes from huggingface_hub's usual sources (HF_TOKEN, `hf auth login`, or `token=`); it is
passed to huggingface_hub only and never printed. Nothing in the local folder is written: a card is
rendered into the commit when the folder has none. Only what a model repo needs goes up (a run folder also holds
checkpoints, optimizer states, tokens...); `include` adds files on purpose, but never hidden or pickled ones.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from fnmatch import fnmatchcase
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError
from transformers.dynamic_module_utils import get_relative_import_files

from ..configuration_hf_gpt import HfGptConfig
from ..counting import parameter_counts
from ..files import PICKLE_SUFFIXES
from .cards import render_card

WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
# What a model repo needs (top-level names); the code files come from config.json's auto_map. Not a run's arguments
# (run.json, or an older finetune_args.json): they are all local paths, and the card already gives the hyperparameters.
MODEL_FILES = (
    "config.json", "generation_config.json", "README.md", "eval_results.json",
    "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
)  # fmt: skip
LEFT_OUT = "left out (not part of a model repo; --include PATTERN adds files, but never hidden or pickled ones)"
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def code_files(folder: Path) -> set[str]:
    """The .py files config.json's auto_map names, with those they import relatively (transformers fetches them too);
    a reference to another repo's code ("org/repo--module.Class") needs no local file."""
    auto_map = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("auto_map") or {}
    references = [r for v in auto_map.values() for r in (v if isinstance(v, list) else [v]) if r and "--" not in r]
    modules = {r.split(".")[0] + ".py" for r in references}
    for module in sorted(modules):
        if not (folder / module).is_file():
            raise FileNotFoundError(f"config.json's auto_map needs {module}, which is not in {folder}")
        modules |= {Path(f).name for f in get_relative_import_files(folder / module)}
    return modules


def visible_files(folder: Path) -> list[str]:
    """The folder's files as POSIX paths relative to it, hidden files and folders skipped; os.walk does not enter
    linked folders, so a link can only be a file's last step."""
    names = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        names += [(Path(root) / f).relative_to(folder).as_posix() for f in files if not f.startswith(".")]
    return sorted(name for name in names if (folder / name).is_file())


def wanted(name: str, code: set[str], include: Sequence[str]) -> bool:
    """Whether a file (relative path) goes up: a model file or code at the top level, or one `include` matches."""
    if name.lower().endswith(PICKLE_SUFFIXES):  # never, whatever `include` says: only safetensors go up
        return False
    model_file = "/" not in name and (name in code or any(fnmatchcase(name, pattern) for pattern in MODEL_FILES))
    return model_file or any(fnmatchcase(name, pattern) for pattern in include)


def check_inside(folder: Path, name: str) -> None:
    """A link is pushed as its target's bytes: fine for a `latest` link to a checkpoint's weights, never for one
    leading out of the folder (to ~/.ssh, /etc or another run)."""
    target = (folder / name).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise ValueError(f"{folder / name} is a symlink to {target}, outside {folder}; copy the file in to push it")


def files_to_push(folder: Path, include: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(pushed, left out): relative paths of what a model repo needs plus what `include` matches, and the rest;
    refuses a folder that would not load and a pushed link that leads out of the folder."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a model folder (save_pretrained writes one)")
    if not any((folder / name).is_file() for name in WEIGHTS):
        raise ValueError(f"{folder} has no safetensors weights ({' or '.join(WEIGHTS)}); only safetensors are pushed")
    code = code_files(folder)
    names = visible_files(folder)
    pushed = [name for name in names if wanted(name, code, include)]
    for name in pushed:
        check_inside(folder, name)
    return pushed, [name for name in names if name not in pushed]


def summary(names: list[str], shown: int = 10) -> str:
    """`a.txt, checkpoints/ (12 files), ...`: a subfolder's files counted together, cut after `shown` entries."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.split("/")[0], []).append(name)
    entries = [files[0] if len(files) == 1 else f"{top}/ ({len(files)} files)" for top, files in groups.items()]
    rest = f", and {len(entries) - shown} more" if len(entries) > shown else ""
    return ", ".join(entries[:shown]) + rest


def card_bytes(folder: Path, repo_id: str, license: str | None, language: str | None) -> bytes | None:
    """The card to commit: the folder's own, with the repo's name in its snippets and the given metadata;
    or a new one for a folder that has none."""
    path = folder / "README.md"
    if path.is_file():
        card = ModelCard.load(path)
        card.text = card.text.replace(str(folder), repo_id)
    else:
        config = HfGptConfig.from_pretrained(folder)
        parameters, _ = parameter_counts(config)
        name = repo_id.split("/")[-1]
        card = render_card(config, parameters, model_name=name, summary="A GPT made with hf_gpt.", model_path=repo_id)
    base = card.data.base_model
    if isinstance(base, str) and (not REPO_ID.fullmatch(base) or Path(base).exists()):
        card.data.base_model = None  # a local path: the Hub accepts only repo ids there
    if license is not None:
        card.data.license = license
    if language is not None:
        card.data.language = language
    return str(card).encode("utf-8")


def push(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    license: str | None = None,
    language: str | None = None,
    token: str | None = None,
    include: Sequence[str] | None = None,
) -> str:
    """Upload a model folder (weights, config with auto_map, code, tokenizer, generation config, card, plus what
    `include`'s fnmatch patterns match on paths relative to the folder, `*` crossing `/`: "logs/*.jsonl") as one
    commit to `repo_id`, creating the repo (and the `revision` branch) when needed; returns the commit's URL.
    What is left out is listed in one printed line."""
    folder = Path(folder)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo id must look like ORG/NAME, got {repo_id!r}")
    include = [include] if isinstance(include, str) else include or ()  # a bare string is one pattern
    pushed, left_out = files_to_push(folder, include)
    if left_out:
        print(f"{LEFT_OUT}: {summary(left_out)}")
    operations = [CommitOperationAdd(name, str(folder / name)) for name in pushed if name != "README.md"]
    operations.append(CommitOperationAdd("README.md", card_bytes(folder, repo_id, license, language)))
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Upload {folder.name} with hf_gpt",
            revision=revision,
        )
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise PermissionError(
                f"the Hub at {api.endpoint} refused to let this token write to {repo_id} (HTTP {status}); "
                f"check that the token has write access to {repo_id.split('/')[0]}. {folder} is unchanged."
            ) from None
        raise OSError(f"pushing {folder} to {repo_id} failed: {e}. {folder} is unchanged.") from None
    except Exception as e:  # the HTTP client's own transport errors: refused, reset or timed-out connections
        raise OSError(f"pushing {folder} to {repo_id} failed: {e}. {folder} is unchanged.") from None
    print(f"pushed {folder} to {repo_id} ({len(operations)} files, one commit): {commit.commit_url}")
    return commit.commit_url
