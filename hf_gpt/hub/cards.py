"""Model cards rendered from the Jinja templates in model_cards/ through huggingface_hub's ModelCard API."""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..configuration_hf_gpt import HfGptConfig
from ..files import looks_local

AUTO_CLASSES = {"text-generation": "AutoModelForCausalLM", "text-classification": "AutoModelForSequenceClassification"}


def template_path(name: str) -> Path:
    """The template shipped in the package (the wheel carries model_cards/ as hf_gpt/model_cards), or,
    when hf_gpt is imported from a source checkout, the one in its model_cards/ folder."""
    try:
        folder = Path(str(resources.files("hf_gpt.model_cards")))
    except ModuleNotFoundError:
        folder = Path(__file__).resolve().parents[2] / "model_cards"
    path = folder / f"{name}.md"
    if not path.is_file():
        raise FileNotFoundError(f"model card template {path} is missing: reinstall hf_gpt")
    return path


def architecture_rows(config: HfGptConfig, num_parameters: int) -> list[tuple[str, str]]:
    kinds = sorted(set(config.attention_layers))
    pattern = "dense" if kinds == ["global"] else f"{' / '.join(config.attention_layers[:2])} alternating"
    if "local" in kinds:
        pattern += f" (local window {config.local_window})"
    return [
        ("Parameters", f"{num_parameters:,}"),
        ("Layers", str(config.num_hidden_layers)),
        ("Width", str(config.hidden_size)),
        ("Heads", str(config.num_attention_heads)),
        ("Context", f"{config.max_position_embeddings} tokens"),
        ("Vocabulary", f"{config.vocab_size} tokens"),
        ("Norm position", f"{config.norm_position}-LayerNorm"),
        ("Attention", pattern),
        ("Activation", config.activation_function),
    ]


def render_card(
    config: HfGptConfig,
    num_parameters: int,
    *,
    model_name: str,
    summary: str,
    pipeline_tag: str = "text-generation",
    training: list[tuple[str, str]] = (),
    evaluation: list[tuple[str, str]] = (),
    example_prompt: str = "Once upon a time",
    model_path: str = "PATH_OR_REPO",
    datasets: list[str] | None = None,
    base_model: str | None = None,
    language: str | list[str] | None = None,
    license: str | None = None,
    small_data: bool = False,
    custom_code: bool = True,
    scores: list[tuple[str, str, float]] = (),
    template: str = "model",
    usage: str | None = None,
    library_name: str = "transformers",
) -> ModelCard:
    """A card for a model folder; `custom_code=False` for a plain GPT-2 export that needs no hf_gpt code; `usage`
    (Markdown) for an export that transformers does not run as it is (GGUF, ONNX), with its `library_name`.

    `scores` are (dataset name, metric, value) triples, written as the Hub's model-index metadata (its
    `dataset.type` wants an id: the name's slug). `base_model` is kept only when it is a Hub repo id: the Hub takes
    nothing else there, and a local path would publish where the model came from.
    """
    results = [
        EvalResult(task_type=pipeline_tag, dataset_type=hub_slug(dataset), dataset_name=dataset, metric_type=metric,
                   metric_value=value)
        for dataset, metric, value in scores
    ]  # fmt: skip
    card_data = ModelCardData(
        library_name=library_name,
        pipeline_tag=pipeline_tag,
        tags=[
            "hf_gpt",
            *(["custom_code"] if custom_code else []),
            *([library_name] if usage else []),
            "gpt",
            pipeline_tag,
        ],  # fmt: skip
        datasets=datasets,
        base_model=None if base_model is None or looks_local(base_model) else base_model,
        language=language,
        license=license,
        eval_results=results or None,
        model_name=model_name if results else None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path(template)),
        model_name=model_name,
        summary=summary,
        architecture=architecture_rows(config, num_parameters),
        training=list(training),
        evaluation=list(evaluation),
        example_prompt=example_prompt.replace('"', '\\"'),
        model_path=model_path,
        auto_class=AUTO_CLASSES.get(pipeline_tag, "AutoModel"),
        context=config.max_position_embeddings,
        small_data=small_data,
        remote_code=", trust_remote_code=True" if custom_code else "",
        custom_code=custom_code,
        usage=usage,
    )


def hub_slug(name: str) -> str:
    """A display name as an id the Hub takes for a dataset: "corpus (validation split)" -> "corpus-validation-split"."""
    return re.sub(r"[^a-z0-9._]+", "-", name.lower()).strip("-._") or "data"


def write_card(card: ModelCard, folder: str | os.PathLike) -> Path:
    path = Path(folder) / "README.md"
    card.save(path)
    return path
