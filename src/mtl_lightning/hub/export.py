"""Export a trained checkpoint in standard formats, into one folder that is at once:

- a sentence-transformers model: `SentenceTransformer(DIR)` encodes as `mtl_lightning.encode`
  does with the checkpoint (same pooling, normalisation and truncation);
- a plain Hugging Face model at its root: `AutoModel.from_pretrained(DIR)`, `AutoTokenizer` too;
- the task heads: `heads.safetensors` and `heads.json` (tasks, types, label names, shapes);
- adapters (`lora`, `lora_per_task`): a shared adapter merged into the encoder's weights; per-task
  adapters as PEFT adapter folders, `adapters/<task>/`, that sentence-transformers loads
  (`model.load_adapter(folder, adapter_name=task)`, `model.set_adapter(task)`) onto the root
  model, which is then the frozen base encoder;
- a model card, `README.md`: Hub metadata (base model, license, language, datasets,
  model-index), base encoder, tasks, their data and losses, hyperparameters, freezing scenario
  and schedule, test metrics and the epochs, usage of every head, limitations, versions, commit,
  the training command, citations (docs/export.md).

python -m mtl_lightning.export ckpt_path=<run>/checkpoints/best-epochNN.ckpt output=exported/
python -m mtl_lightning.export ckpt_path=<run>/checkpoints/best-epochNN.ckpt output=exported/ \
    push_to_hub=<user>/<repo> license=apache-2.0

sentence-transformers is not needed to export: its files are written directly (the format of
`mtl_lightning.core.st_folder`).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from mtl_lightning.core import st_folder
from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.provenance import project_commit
from mtl_lightning.core.summary import read_summary
from mtl_lightning.core.writing import staged_folder
from mtl_lightning.model.adapters import plain_copy, write_adapter
from mtl_lightning.model.encoder import PACKAGED_MINILM, layer_groups, packaged_minilm_path
from mtl_lightning.model.inference import Predictor, trained_length
from mtl_lightning.model.module import MultiTaskModule, load_module
from mtl_lightning.scenarios.base import Scenario
from mtl_lightning.scenarios.build import build_scenario
from mtl_lightning.tasks import build_task_type

HEADS_WEIGHTS = "heads.safetensors"
HEADS_CONFIG = "heads.json"
HEADS_FORMAT = "mtl-lightning-heads/1"
ADAPTERS_DIR = "adapters"  # per-task adapters: adapters/<task>/, PEFT adapter folders
VERSIONED = (
    "mtl-lightning",
    "torch",
    "transformers",
    "lightning",
    "sentence-transformers",
    "safetensors",
    "tokenizers",
    "datasets",
)


def versions() -> dict[str, str]:
    """Installed versions of the libraries the export involves (absent ones left out)."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def write_heads(folder: Path, module: MultiTaskModule) -> dict:
    """`heads.safetensors` (tensors `<task>.<name>`: `classifier.weight|bias`, a similarity
    task's `projection.weight|bias`) and `heads.json` (each task's type, its options, labels,
    architecture in words and tensor shapes)."""
    tensors = {
        f"{task}.{name}": tensor.detach().cpu().contiguous()
        for task, head in module.heads.items()
        for name, tensor in head.state_dict().items()
    }
    save_file(tensors, str(folder / HEADS_WEIGHTS), metadata={"format": HEADS_FORMAT})
    config = {
        "format": HEADS_FORMAT,
        "embedding": {
            "dim": module.encoder.hidden_size,
            "pooling": module.encoder.pooling,
            "normalize": module.encoder.normalize,
        },
        "tasks": {
            task: {
                "type": module.task_types[task].name,
                "options": module.task_types[task].options,  # e.g. a similarity's score_range
                "labels": list(labels),
                "architecture": module.task_types[task].architecture,
                "in_features": module.encoder.hidden_size,
                "num_labels": len(labels),
                "dropout": getattr(module.heads[task], "dropout", nn.Dropout(0.0)).p,
                "tensors": {
                    name: list(tensors[f"{task}.{name}"].shape)
                    for name in module.heads[task].state_dict()
                },
                # The head reads the embeddings of this adapter (load it onto the root model).
                **({"adapter": f"{ADAPTERS_DIR}/{task}"} if module.per_task_adapters else {}),
            }
            for task, labels in module.tasks.items()
        },
    }
    (folder / HEADS_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return config


def load_heads(folder: str | Path) -> tuple[nn.ModuleDict, dict[str, list[str]]]:
    """The exported heads, ready for inference (eval mode, no gradients: they take
    sentence-transformers' inference-mode tensors), and each task's label names."""
    folder = Path(folder)
    if not (folder / HEADS_CONFIG).is_file():
        raise ConfigError(f"{folder} has no {HEADS_CONFIG}: give a folder written by export.")
    config = json.loads((folder / HEADS_CONFIG).read_text(encoding="utf-8"))
    tensors = load_file(str(folder / HEADS_WEIGHTS))
    heads = nn.ModuleDict()
    for task, spec in config["tasks"].items():
        kind = build_task_type(
            task, spec["labels"], {"type": spec["type"], **spec.get("options", {})}
        )
        head = kind.build_head(spec["in_features"], spec["dropout"])
        prefix = f"{task}."
        head.load_state_dict(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
        heads[task] = head.eval().requires_grad_(False)  # for inference, on any tensor
    return heads, {task: spec["labels"] for task, spec in config["tasks"].items()}


def read_run(ckpt_path: Path) -> dict:
    """What the run folder of `<run>/checkpoints/<name>.ckpt` recorded: its config (Hydra's copy,
    else the CSV logger's `hparams.yaml`), the command-line overrides, and `summary.json`; and
    the checkpoint's own epoch and step."""
    run_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else None
    record = {"dir": run_dir, "config": None, "overrides": None, "summary": {}}
    record["checkpoint"] = _checkpoint_position(ckpt_path)
    if run_dir is None:
        return record
    for config_file in (run_dir / ".hydra" / "config.yaml", run_dir / "hparams.yaml"):
        if config_file.is_file():
            # Unresolved on purpose: Hydra's copy holds ${hydra:...}, only known inside a run.
            config = OmegaConf.load(config_file)
            record["config"] = OmegaConf.to_container(config, resolve=False)
            break
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        record["overrides"] = [str(o) for o in OmegaConf.load(overrides)]
    record["summary"] = read_summary(run_dir)
    return record


def _scenario(config: dict) -> Scenario | None:
    """The run's scenario, its defaults settled as train.py settles them (None: not recorded,
    or a class this installation cannot import)."""
    if not config.get("freezing"):
        return None
    try:
        return build_scenario(config["freezing"], (config.get("model") or {}).get("init_from"))
    except (ConfigError, TypeError):
        return None


def _checkpoint_position(ckpt_path: Path) -> dict:
    """The checkpoint's `epoch` and `global_step` (None where unreadable), memory-mapped: the
    weights are not read again."""
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # export has read it already; a file it cannot map just says less
        return {"epoch": None, "global_step": None}
    return {"epoch": checkpoint.get("epoch"), "global_step": checkpoint.get("global_step")}


def _epochs(config: dict) -> int:
    epochs = (config.get("trainer") or {}).get("max_epochs")
    return epochs if isinstance(epochs, int) and 0 < epochs <= 50 else 3


# The run's settings listed as the card's training hyperparameters (each where the run set it).
HYPERPARAMETERS = (
    "data.max_length",
    "data.batch_size",
    "data.sampling",
    "data.temperature",
    "data.max_train_examples",
    "data.val_fraction",
    "data.test_fraction",
    "model.lr",
    "model.head_lr",
    "model.head_lrs",
    "model.layerwise_lr_decay",
    "model.weight_decay",
    "model.warmup_ratio",
    "model.head_dropout",
    "model.init_from",
    "trainer.max_epochs",
    "trainer.precision",
    "trainer.accumulate_grad_batches",
    "trainer.gradient_clip_val",
    "seed",
    "optimized_metric",
)
# Shown only when set: their absence is the usual case and says nothing.
OPTIONAL_HYPERPARAMETERS = (
    "model.init_from",
    "trainer.accumulate_grad_batches",
    "trainer.gradient_clip_val",
)
SOURCES_PACKAGE = "mtl_lightning.data.sources."
SBERT_CITATION = """@inproceedings{reimers-2019-sentence-bert,
    title = "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks",
    author = "Reimers, Nils and Gurevych, Iryna",
    booktitle = "Proceedings of the 2019 Conference on Empirical Methods in Natural Language Processing",
    month = "11",
    year = "2019",
    publisher = "Association for Computational Linguistics",
    url = "https://arxiv.org/abs/1908.10084",
}"""  # noqa: E501 (as sentence-transformers' cards print it)
MINILM_CITATION = """@inproceedings{wang-2020-minilm,
    title = "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained Transformers",
    author = "Wang, Wenhui and Wei, Furu and Dong, Li and Bao, Hangbo and Yang, Nan and Zhou, Ming",
    booktitle = "Advances in Neural Information Processing Systems",
    volume = "33",
    pages = "5776--5788",
    year = "2020",
    url = "https://arxiv.org/abs/2002.10957",
}"""  # noqa: E501
_MISSING = object()


def _plain(value: Any) -> str:
    """A setting as the command line writes it (`true`, `null`, `0.0001`, JSON for containers),
    never Python's repr (`True`, `None`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _cell(text: str) -> str:
    """Text for a Markdown table cell: a `|` inside it would end the cell."""
    return text.replace("|", "\\|")


def _setting(config: DictConfig, key: str) -> Any:
    """`key` of the run's config, interpolations resolved where they can be (`${hydra:...}`
    cannot be outside the run); `_MISSING` when the config lacks it."""
    try:
        value = OmegaConf.select(config, key, default=_MISSING, throw_on_resolution_failure=False)
    except Exception:  # an interpolation into a key that is gone
        return _MISSING
    if isinstance(value, DictConfig | ListConfig):
        try:
            return OmegaConf.to_container(value, resolve=True)
        except Exception:
            return OmegaConf.to_container(value, resolve=False)
    return value


def hub_model_id(name_or_path: str) -> str | None:
    """`name_or_path` when it is known to be a Hugging Face Hub model id, else None (a local
    folder, here or where the run trained, or a name that is not in the local Hub cache, such
    as a folder given relative to a directory that is gone)."""
    if name_or_path == PACKAGED_MINILM:
        return name_or_path
    looks_local = name_or_path.startswith((".", "/", "~", "\\")) or name_or_path.count("/") > 1
    if looks_local or Path(name_or_path).expanduser().exists():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "config.json")
    except Exception:  # not a valid repo id
        return None
    return name_or_path if isinstance(cached, str) else None


def _front_matter(readme: Path) -> dict:
    """The YAML front matter of a model card (empty when it has none or is unreadable)."""
    try:
        text = readme.read_text(encoding="utf-8")
        if not text.startswith("---"):
            return {}
        meta = yaml.safe_load(text.split("---", 2)[1])
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _base_folder(base: str) -> Path | None:
    if base == PACKAGED_MINILM:
        return packaged_minilm_path()
    path = Path(base).expanduser()
    return path if path.is_dir() else None


def _sources(config: DictConfig, tasks: list[str]) -> dict[str, Any]:
    """Each task's data source rebuilt from the run's `data.tasks.<task>`, to ask where its
    examples come from; None where that cannot be done. Only this project's sources are built
    (their constructors store their arguments and read nothing): a run folder's config is not
    a reason to import or call anything else."""
    sources: dict[str, Any] = {}
    for task in tasks:
        node = _setting(config, f"data.tasks.{task}")
        sources[task] = None
        target = node.get("_target_") if isinstance(node, dict) else None
        if not isinstance(target, str) or not target.startswith(SOURCES_PACKAGE):
            continue
        try:
            builder = get_object(target)
            if getattr(builder, "__module__", "").startswith(SOURCES_PACKAGE):
                sources[task] = builder(**{k: v for k, v in node.items() if k[0] != "_"})
        except Exception:  # a source renamed or changed since the run: the card says less
            continue
    return sources


def _source_text(config: DictConfig, task: str, source: Any) -> str:
    origin = getattr(source, "origin", None)
    if origin:
        return origin
    target = _setting(config, f"data.tasks.{task}._target_")
    return f"`{target}`" if isinstance(target, str) else "not recorded"


def _exported_and_tested(run: dict, config: DictConfig) -> tuple[int | None, int | None]:
    """The exported checkpoint's epoch, and the epoch of the checkpoint the run tested (the best
    by `val/primary_mean`, summary.json's `best_epochs.chosen`; None when not recorded, or when
    the run chose its best checkpoint otherwise, whose epoch the summary does not hold)."""
    exported = (run.get("checkpoint") or {}).get("epoch")
    monitor = _setting(config, "optimized_metric")
    chosen = (run["summary"].get("best_epochs") or {}).get("chosen")
    mode = _setting(config, "callbacks.model_checkpoint.mode")
    if monitor not in (_MISSING, "val/primary_mean") or mode not in (_MISSING, "max"):
        chosen = None
    return exported, chosen


def _model_index(
    name: str, module: MultiTaskModule, metrics: dict, datasets: dict[str, str | None]
) -> list[dict]:
    """The Hub's `model-index`: per task, its test metrics (the types' Hub names)."""
    results = []
    for task, kind in module.task_types.items():
        values = [
            {"type": metric.hub, "value": metrics[f"test/{task}/{key}"], "name": metric.card}
            for key, metric in kind.report_metrics.items()
            if metrics.get(f"test/{task}/{key}") is not None
        ]
        if values:
            task_name = kind.hub_task.replace("-", " ").title()
            dataset = {"name": task, "type": datasets.get(task) or task, "split": "test"}
            results.append(
                {
                    "task": {"type": kind.hub_task, "name": task_name},
                    "dataset": dataset,
                    "metrics": values,
                }
            )
    return [{"name": name, "results": results}] if results else []


def _usage(module: MultiTaskModule) -> list[str]:
    """A runnable example: the embeddings, then every head in NumPy, each as its type says."""
    kinds = module.task_types
    lines = [
        "```python",
        "import numpy as np",
        "from safetensors.numpy import load_file",
        "from sentence_transformers import SentenceTransformer",
        "",
        'model = SentenceTransformer("<this folder>")',
        f'heads = load_file("<this folder>/{HEADS_WEIGHTS}")  # label names: {HEADS_CONFIG}',
    ]
    if any(not kind.pair for kind in kinds.values()):
        lines.append('embeddings = model.encode(["Who wrote Hamlet?"])')
    if any(kind.pair for kind in kinds.values()):
        lines += [
            "# A pair task's two sentences, each encoded alone:",
            'u = model.encode(["A man is playing a guitar."])',
            'v = model.encode(["A man plays the guitar."])',
        ]
    lines.append("out = {}")
    for task, kind in kinds.items():
        lines += kind.usage_lines(module.heads[task])
    return [*lines, "```"]


def _adapter_lines(module: MultiTaskModule) -> list[str]:
    """The card's section on the encoder's adapters (none: no lines)."""
    spec = module.hparams.get("adapters")
    if not spec:
        return []
    config = spec["config"]
    method = str(spec["peft_type"])
    keys = [key for key in ("r", "lora_alpha", "lora_dropout") if key in config]
    shown = ", ".join(f"{key}={_plain(config[key])}" for key in keys)
    where = f"{len(config['target_modules'])} linear layers of the encoder's transformer layers"
    lines = ["", "## Adapters", ""]
    if not spec["per_task"]:
        return [
            *lines,
            f"One {method} adapter (PEFT; {shown}; on {where}), shared by every task, trained "
            "with the heads on the frozen base encoder. It is **merged** into this folder's "
            "weights: the folder encodes as the trained model, with no adapter to load.",
        ]
    lines += [
        f"One {method} adapter per task (PEFT; {shown}; on {where}), each trained on its own "
        "task's batches over the shared frozen base encoder. This folder's root model is that "
        "frozen base, **without** adapters. Each task's adapter is a PEFT adapter folder; the "
        "task's head reads the embeddings of its adapter:",
        "",
        "| task | adapter folder |",
        "| --- | --- |",
    ]
    lines += [f"| {task} | `{ADAPTERS_DIR}/{task}` |" for task in module.tasks]
    task = next(iter(module.tasks))
    lines += [
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        'model = SentenceTransformer("<this folder>")',
        f'model.load_adapter("<this folder>/{ADAPTERS_DIR}/{task}", adapter_name="{task}")',
        f'model.set_adapter("{task}")  # {task}\'s embeddings, for its head',
        "```",
    ]
    return lines


def _citations(module: MultiTaskModule, base: str) -> list[str]:
    entries = [("Sentence Transformers", SBERT_CITATION)]
    if base == PACKAGED_MINILM:
        entries.append(("MiniLM (the base model's architecture)", MINILM_CITATION))
    for kind in module.task_types.values():
        entries += [entry for entry in kind.card_citations() if entry not in entries]
    lines = ["## Citation", ""]
    for name, bibtex in entries:
        lines += [f"### {name}", "", "```bibtex", bibtex, "```", ""]
    if base != PACKAGED_MINILM:
        lines += [f"For the base model (`{base}`), cite what its own model card asks for.", ""]
    return lines[:-1]


def _commit_line(summary: dict) -> str:
    recorded, when = summary.get("commit"), "recorded when the run trained"
    if not recorded:
        recorded, when = project_commit(), "at export: the run did not record one"
    if not recorded:
        return (
            "- code: mtl-lightning commit not recorded (neither the run nor this export ran "
            "from a git checkout)"
        )
    dirty = ", with uncommitted changes" if recorded.get("dirty") else ""
    return f"- code: mtl-lightning commit `{recorded['sha']}` ({when}{dirty})"


def model_card(
    module: MultiTaskModule,
    ckpt_path: Path,
    run: dict,
    max_seq_length: int,
    heads: dict,
    license: str | None = None,  # noqa: A002 (the Hub's metadata key)
    language: str | list[str] | None = None,
) -> str:
    """The README.md of the exported folder: Hub front matter (metadata), then the facts.

    `license` and `language` are the export's settings; without a `language`, the sources'
    language where they all state the same one.
    """
    encoder_settings = dict(module.hparams.encoder or {})
    base = encoder_settings.get("name_or_path", PACKAGED_MINILM)
    base_id = hub_model_id(base)
    config = OmegaConf.create(run["config"] or {})
    recorded = run["config"] is not None
    summary = run["summary"]
    metrics = summary.get("metrics") or {}
    examples = summary.get("examples") or {}
    given = summary.get("given_splits")
    scenario = _scenario(config)
    tasks = list(module.tasks)
    kinds = module.task_types
    sources = _sources(config, tasks)
    hub_datasets = {t: getattr(s, "hub_dataset", None) for t, s in sources.items()}
    if language is None:
        languages = {getattr(s, "language", None) for s in sources.values()}
        language = languages.pop() if len(languages) == 1 else None
    exported_epoch, tested_epoch = _exported_and_tested(run, config)
    same_weights = exported_epoch is not None and exported_epoch == tested_epoch
    train_length = _setting(config, "data.max_length")
    title = f"Multi-task sentence encoder ({', '.join(tasks)})"

    # The Hub reads this front matter (YAML) as the model's metadata.
    meta: dict[str, Any] = {
        "library_name": "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
        "tags": ["sentence-transformers", "feature-extraction", "text-classification"]
        + ["mtl-lightning"],
    }
    if base_id:
        meta["base_model"] = base_id
    if license:
        meta["license"] = license
    if language:
        meta["language"] = language
    if any(hub_datasets.values()):
        meta["datasets"] = sorted({d for d in hub_datasets.values() if d})
    model_index = _model_index(title, module, metrics, hub_datasets) if same_weights else []
    if model_index:
        meta["model-index"] = model_index
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]

    lines += [
        f"# {title}",
        "",
        "Trained with mtl-lightning: one shared encoder, one head per task. This "
        "folder is a sentence-transformers model, a plain Hugging Face model at its root, and "
        f"the task heads ({HEADS_WEIGHTS}, {HEADS_CONFIG}).",
        "",
        "## Base encoder",
        "",
        f"- [`{base}`](https://huggingface.co/{base})"
        if base_id
        else f"- `{base}`: a local folder or a name not known to be a Hub id, so not the "
        "card's `base_model` metadata",
        f"- pooling: {module.encoder.pooling}; normalised: "
        f"{'yes' if module.encoder.normalize else 'no'}; max_seq_length: {max_seq_length}; "
        f"embedding dimension: {module.encoder.hidden_size}",
        "- similarity function: cosine (`model.similarity`, sentence-transformers' default) of "
        "the embeddings"
        + "".join(f"; {note}" for kind in kinds.values() for note in kind.card_similarity_notes()),
        f"- exported from `{ckpt_path.name}`, epoch "
        f"{_plain(exported_epoch)} (counted from 0, as in `best-epochNN.ckpt`), global step "
        f"{_plain((run.get('checkpoint') or {}).get('global_step'))}",
        _commit_line(summary),
        f"- language: {_plain(language) if language else 'not given (export `language=`)'}",
        f"- license: {license or 'not given (export `license=`)'}",
    ]
    base_folder = _base_folder(base)
    base_license = _front_matter(base_folder / "README.md").get("license") if base_folder else None
    if base_license:
        lines[-1] += f"; the base model's card gives `{base_license}`"

    lines += [
        "",
        "## Tasks",
        "",
        "| task | type | labels | loss | train | val | test |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task in module.tasks:
        sizes = examples.get(task) or {}
        counts = " | ".join(str(sizes.get(split, "-")) for split in ("train", "val", "test"))
        kind = kinds[task]
        shown = kind.label_description()
        loss = _cell(kind.loss_in_words())
        lines.append(f"| {task} | {kind.name} | {_cell(shown)} | {loss} | {counts} |")
    if not examples:
        lines += ["", "Data sizes: not recorded (the run has no summary.json with `examples`)."]

    lines += [
        "",
        "## Training data",
        "",
        "| task | source | splits the source gave | carved out of its train split |",
        "| --- | --- | --- | --- |",
    ]
    carved_tests = []
    for task in tasks:
        if given is not None and task in given:
            gave = ", ".join(given[task])
            carved = [s for s in ("val", "test") if s not in given[task]]
            carved_tests += [task] if "test" in carved else []
            carved_text = ", ".join(carved) or "none"
        else:
            gave = carved_text = "not recorded"
        source_text = _source_text(config, task, sources[task])
        lines.append(f"| {task} | {_cell(source_text)} | {gave} | {carved_text} |")
    fractions = {s: _setting(config, f"data.{s}_fraction") for s in ("val", "test")}
    if fractions["val"] is not _MISSING and fractions["test"] is not _MISSING:
        lines += [
            "",
            f"A split a source does not give is carved out of its train split: "
            f"`data.val_fraction={_plain(fractions['val'])}`, "
            f"`data.test_fraction={_plain(fractions['test'])}`, seeded (`seed`), stratified by "
            "label for classes.",
        ]

    lines += ["", "## Training hyperparameters", ""]
    if recorded:
        for key in HYPERPARAMETERS:
            value = _setting(config, key)
            skip = value is _MISSING or (key in OPTIONAL_HYPERPARAMETERS and value is None)
            if key == "data.temperature" and _setting(config, "data.sampling") != "temperature":
                skip = True
            if skip:
                continue
            note = ""
            if key == "data.max_length":
                note = (
                    f" (the training truncation; the exported model's max_seq_length is "
                    f"{max_seq_length})"
                )
            lines.append(f"- `{key}`: {_plain(value)}{note}")
        weighting = _setting(config, "weighting")
        if isinstance(weighting, dict) and isinstance(weighting.get("_target_"), str):
            arguments = ", ".join(
                f"{k}={_plain(v)}" for k, v in weighting.items() if not k.startswith("_")
            )
            name = weighting["_target_"].rsplit(".", 1)[-1]
            lines.append(f"- `weighting`: {name}" + (f" ({arguments})" if arguments else ""))
    else:
        lines.append(
            "The run's config was not recorded (no .hydra/config.yaml or hparams.yaml beside "
            "the checkpoint); the checkpoint's own model settings:"
        )
        stored = ("lr", "head_lr", "head_lrs", "layerwise_lr_decay", "weight_decay", "warmup_ratio")
        for key in (*stored, "head_dropout", "loss_weighting", "loss_weights"):
            lines.append(f"- `model.{key}`: {_plain(module.hparams.get(key))}")
        lines.append("- `data.max_length` (the training truncation): not recorded")

    lines += ["", "## Freezing", ""]
    if scenario is None:
        lines.append("Scenario: not recorded.")
    else:
        lines.append(f"Scenario: `{scenario.name}`.")
        settings = scenario.settings()  # only those it reads, and only where they act
        if settings:
            shown = ", ".join(f"`freezing.{k}={_plain(v)}`" for k, v in settings.items())
            lines.append(f"Settings: {shown}.")
        groups = len(layer_groups(module.encoder.model))
        lines += ["", *scenario.schedule_lines(tasks, groups, _epochs(config))]
    lines += _adapter_lines(module)

    monitor = _setting(config, "optimized_metric")
    monitor = "val/primary_mean" if monitor is _MISSING else monitor
    lines += ["", "## Test metrics", ""]
    if tested_epoch is not None:
        lines.append(
            f"Of the run's best checkpoint by `{monitor}`, epoch {tested_epoch}, on each task's "
            "test split, as the run reported them in summary.json."
        )
    else:
        lines.append(
            f"Of the run's best checkpoint by `{monitor}` (its epoch is not recorded in "
            "summary.json), on each task's test split, as the run reported them."
        )
    if same_weights:
        lines.append(f"These are the exported weights (`{ckpt_path.name}` is of that epoch).")
    else:
        lines += [
            "",
            f"> **The exported weights are not the ones tested.** `{ckpt_path.name}` is of "
            f"epoch {_plain(exported_epoch)}, the metrics below of epoch {_plain(tested_epoch)}; "
            "so they are left out of the card's model-index metadata. Export "
            "`checkpoints/best-epochNN.ckpt` of the run for the weights they describe.",
        ]
    lines += ["", "| task | metric | test |", "| --- | --- | --- |"]
    for task, kind in kinds.items():
        for key, metric in kind.report_metrics.items():
            value = metrics.get(f"test/{task}/{key}")
            lines.append(f"| {task} | {metric.card} | {'-' if value is None else f'{value:.4f}'} |")
    forgetting = {t: metrics.get(f"val/{t}/forgetting") for t in tasks}
    if any(value is not None for value in forgetting.values()):  # a head frozen in the run
        for task, value in forgetting.items():
            if value is not None:
                lines.append(f"| {task} | forgetting (val) | {value:.4f} |")
        lines += [
            "",
            "Forgetting is `val/<task>/forgetting` of the frozen-head task: its val accuracy "
            "when its head froze minus at the end.",
        ]
    best = summary.get("best_epochs") or {}
    if best.get("per_task"):
        peaks = ", ".join(f"{t} {e}" for t, e in best["per_task"].items())
        lines += ["", f"Each task's own best val epoch: {peaks}."]
        if best.get("note"):
            lines.append(best["note"])

    lines += [
        "",
        "## Use",
        "",
        "Every head in NumPy, from this folder's files alone "
        "(`out[task]`: a classification task's logits, a similarity task's score):",
        "",
        *_usage(module),
        "",
        *(
            [
                "Each task's embeddings come from its own adapter: set it before encoding that "
                "task's sentences (see Adapters).",
                "",
            ]
            if module.per_task_adapters
            else []
        ),
        "With mtl-lightning, `mtl_lightning.hub.export.load_heads(<this folder>)` gives the heads "
        "as torch modules and the label names: `heads[task](embeddings)`, pair and similarity "
        "heads `heads[task](u, v)`, on `model.encode(..., convert_to_tensor=True)` (a "
        "similarity head returns the cosine; map it onto the score range as above).",
        "",
        "`AutoModel.from_pretrained(<this folder>)` loads the encoder; pool its "
        "`last_hidden_state` as above (its pooler is not part of the trained model: its "
        "`pooler_output` is untrained).",
        "",
        "## Intended use and limitations",
        "",
        f"Sentence embeddings, and predictions for the tasks it was trained on ({', '.join(tasks)}"
        f"), for text like their training data{f' ({_plain(language)})' if language else ''}. "
        "A research model: it was evaluated only on the test splits above.",
        "",
    ]
    limits = []
    if carved_tests:
        limits.append(
            f"The test split of {', '.join(carved_tests)} was carved out of the task's training "
            "data, not given by its source: its metrics measure the training distribution; they "
            "are not a separate benchmark."
        )
    if given is None:
        limits.append(
            "Whether the test splits were given by their sources or carved out of training "
            "data was not recorded (summary.json has no `given_splits`)."
        )
    if isinstance(train_length, int) and train_length < max_seq_length:
        limits.append(
            f"Training cut sentences at {train_length} tokens (`data.max_length`); this "
            f"model encodes up to {max_seq_length}: text past {train_length} tokens was never "
            "trained on."
        )
    for kind in kinds.values():
        limits += kind.card_limits()
    if not same_weights:
        limits.append("The exported weights are not the tested ones (see Test metrics).")
    limits.append(
        "What the base model learned, and its limits, carry over: see the base model's card."
    )
    lines += [f"- {limit}" for limit in limits]

    lines += [
        "",
        "## Versions",
        "",
        "Exported with: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
        "",
        "## Training command",
        "",
    ]
    if run["overrides"] is not None:
        command = " ".join(["python -m mtl_lightning.train", *map(shlex.quote, run["overrides"])])
        lines += ["```bash", command, "```"]
    else:
        lines.append(
            "Not recorded: the run was not started from the command line (no .hydra/overrides"
            ".yaml in its folder)."
        )
    lines += ["", *_citations(module, base)]
    return "\n".join(lines) + "\n"


def export_checkpoint(
    ckpt_path: str | Path,
    output: str | Path,
    max_length: int | None = None,
    overwrite: bool = False,
    license: str | None = None,  # noqa: A002 (the Hub's metadata key)
    language: str | list[str] | None = None,
) -> Path:
    """Write the export folder of a checkpoint (see the module docstring); return its path.
    `max_length` None: the `data.max_length` it was trained with, as `encode`'s default.
    `license` and `language` are the model card's metadata (`model_card`)."""
    ckpt_path = Path(ckpt_path).expanduser()
    output = Path(output).expanduser()
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise ConfigError(
            f"output={output} exists and is not an empty folder: give a new folder, or "
            "overwrite=true to write into it."
        )
    # Written beside the target and moved into place once whole: a full disk or a kill leaves
    # no half-written folder; a folder that cannot be written fails before the model loads.
    with staged_folder(output, "output") as staging:
        _write_export(ckpt_path, staging, max_length, license, language)
    return output


def _write_export(
    ckpt_path: Path,
    output: Path,
    max_length: int | None,
    license: str | None,  # noqa: A002 (the Hub's metadata key)
    language: str | list[str] | None,
) -> None:
    """The export folder's files, written into `output` (a new, empty folder)."""
    module = load_module(ckpt_path, "ckpt_path")  # weights-only; a bad file is one sentence
    tokenizer = module.tokenizer()
    # The truncation `encode` applies (max_length, capped by positions and the tokenizer) is
    # the folder's max_seq_length: both then cut a long sentence at the same token.
    if max_length is None:
        max_length = trained_length(module)
    predictor = Predictor(module.encoder, tokenizer, device="cpu", max_length=max_length)
    started = time.time_ns() - 1_000_000_000  # file times may trail the clock by a tick
    spec = module.hparams.get("adapters")
    encoder_model = module.encoder.model
    if spec:  # a plain model: the shared adapter merged in, or the frozen base of per-task ones
        encoder_model = plain_copy(encoder_model, None if spec["per_task"] else spec["names"][0])
    encoder_model.save_pretrained(output)
    if spec and spec["per_task"]:
        base = hub_model_id((module.hparams.encoder or {}).get("name_or_path", PACKAGED_MINILM))
        for name in spec["names"]:
            write_adapter(module.encoder.model, name, output / ADAPTERS_DIR / name, base)
    tokenizer.save_pretrained(output)
    st_folder.write_folder(
        output,
        hidden_size=module.encoder.hidden_size,
        pooling=module.encoder.pooling,
        normalize=module.encoder.normalize,
        max_seq_length=predictor.max_length,
        # sentence-transformers' own keys for the versions that wrote the folder.
        versions={
            k.replace("-", "_"): v
            for k, v in versions().items()
            if k in ("sentence-transformers", "transformers")
        }
        | {"pytorch": torch.__version__},
    )
    heads = write_heads(output, module)
    card = model_card(
        module, ckpt_path, read_run(ckpt_path), predictor.max_length, heads, license, language
    )
    (output / "README.md").write_text(card, encoding="utf-8")
    readable_as_umask_allows(output, started)


def readable_as_umask_allows(folder: Path, since_ns: int) -> None:
    """Give the files written into `folder` since `since_ns` the mode the umask allows, as `open`
    does: the safetensors writers create theirs 0600, which a colleague or a serving container
    running as another user could not read. Files that were there before keep their mode."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file() and path.stat().st_mtime_ns >= since_ns:
            path.chmod(0o666 & ~umask)


def push_to_hub(folder: Path, repo_id: str) -> str:
    """Upload the folder to the Hub repo `repo_id` (created if missing); return its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from mtl_lightning.core.resolve import hub_reachable

    later = f"upload it later with `hf upload {repo_id} {folder}`"
    if not hub_reachable():
        raise ConfigError(
            f"push_to_hub={repo_id}: the Hugging Face hub is not reachable (no network, or "
            f"HF_HUB_OFFLINE=1); the folder is written at {folder}: {later}."
        )
    api = HfApi()
    try:
        url = api.create_repo(repo_id, exist_ok=True).url
        api.upload_folder(repo_id=repo_id, folder_path=folder)
    except HfHubHTTPError as error:
        reason = str(error).splitlines()[0]
        raise ConfigError(
            f"push_to_hub={repo_id} was refused by the hub ({reason}): log in with "
            f"`hf auth login` and check the repo id; the folder is at {folder}: {later}."
        ) from None
    return str(url)


def export(cfg: DictConfig) -> Path:
    """`export_checkpoint` from the command's config, then the optional push."""
    if cfg.ckpt_path is None or cfg.output is None:
        raise ConfigError(
            f"ckpt_path and output are both needed: got ckpt_path={cfg.ckpt_path}, "
            f"output={cfg.output}; e.g. ckpt_path=<run>/checkpoints/last.ckpt output=exported/."
        )
    language = cfg.get("language")
    folder = export_checkpoint(
        cfg.ckpt_path,
        cfg.output,
        cfg.max_length,
        cfg.overwrite,
        license=cfg.get("license"),
        language=list(language) if isinstance(language, ListConfig) else language,
    )
    print(f"Exported {cfg.ckpt_path} to {folder}.", file=sys.stderr)
    if cfg.push_to_hub:
        url = push_to_hub(folder, str(cfg.push_to_hub))
        print(f"Pushed {folder} to {url}.", file=sys.stderr)
    return folder
