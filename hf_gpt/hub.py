"""`hf-gpt push`: a model folder to the Hub (or whatever HF_ENDPOINT names) in one commit.

The token comes from huggingface_hub's usual sources (HF_TOKEN, `hf auth login`, or `token=`); it is
passed to huggingface_hub only and never printed. Nothing in the local folder is written: a card is
rendered into the commit when the folder has none.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError

from .cards import render_card
from .configuration_hf_gpt import HfGptConfig
from .estimate import parameter_counts

WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def files_to_push(folder: Path) -> list[Path]:
    """Every file of the model folder except hidden ones; refuses a folder that would not load."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a model folder (save_pretrained writes one)")
    if not any((folder / name).is_file() for name in WEIGHTS):
        raise ValueError(f"{folder} has no safetensors weights ({' or '.join(WEIGHTS)}); only safetensors are pushed")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    for reference in (config.get("auto_map") or {}).values():
        module = reference.split("--")[-1].split(".")[0] + ".py"
        if not (folder / module).is_file():
            raise FileNotFoundError(f"config.json's auto_map needs {module}, which is not in {folder}")
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


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
) -> str:
    """Upload a model folder (weights, config with auto_map, code, tokenizer, generation config, card) as one
    commit to `repo_id`, creating the repo (and the `revision` branch) when needed; returns the commit's URL."""
    folder = Path(folder)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo id must look like ORG/NAME, got {repo_id!r}")
    files = files_to_push(folder)
    operations = [CommitOperationAdd(str(p.relative_to(folder)), str(p)) for p in files if p.name != "README.md"]
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
