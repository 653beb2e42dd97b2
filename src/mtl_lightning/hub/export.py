"""Export a trained checkpoint in standard formats, into one folder that is at once:

- a sentence-transformers model: `SentenceTransformer(DIR)` encodes as `mtl_lightning.encode`
  does with the checkpoint (same pooling, normalisation and truncation);
- a plain Hugging Face model at its root: `AutoModel.from_pretrained(DIR)`, `AutoTokenizer` too;
- the task heads: `heads.safetensors` and `heads.json` (tasks, types, label names, shapes);
- a model card, `README.md`: base encoder, tasks and data sizes, freezing scenario and its
  schedule, test metrics and forgetting, library versions, the training command.

python -m mtl_lightning.export ckpt_path=<run>/checkpoints/last.ckpt output=exported/
python -m mtl_lightning.export ckpt_path=<run>/checkpoints/last.ckpt output=exported/ \
    push_to_hub=<user>/<repo>

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

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from mtl_lightning.core import st_folder
from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.summary import read_summary
from mtl_lightning.core.writing import staged_folder
from mtl_lightning.model.encoder import PACKAGED_MINILM, layer_groups
from mtl_lightning.model.inference import Predictor, trained_length
from mtl_lightning.model.module import MultiTaskModule, load_module
from mtl_lightning.scenarios.base import Scenario
from mtl_lightning.scenarios.build import build_scenario
from mtl_lightning.tasks import build_task_type

HEADS_WEIGHTS = "heads.safetensors"
HEADS_CONFIG = "heads.json"
HEADS_FORMAT = "mtl-lightning-heads/1"
VERSIONED = (
    "mtl-lightning",
    "torch",
    "transformers",
    "lightning",
    "sentence-transformers",
    "safetensors",
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
    else the CSV logger's `hparams.yaml`), the command-line overrides, and `summary.json`."""
    run_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else None
    record = {"dir": run_dir, "config": None, "overrides": None, "summary": {}}
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


def _value(value) -> str:
    """A setting as one writes it on the command line (`true`, not Python's `True`)."""
    return value if isinstance(value, str) else json.dumps(value)


def _epochs(config: dict) -> int:
    epochs = (config.get("trainer") or {}).get("max_epochs")
    return epochs if isinstance(epochs, int) and 0 < epochs <= 50 else 3


def _metric(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    return "-" if value is None else f"{value:.4f}"


def model_card(
    module: MultiTaskModule, ckpt_path: Path, run: dict, max_seq_length: int, heads: dict
) -> str:
    """The README.md of the exported folder (Hub model-card front matter, then the facts)."""
    encoder_settings = dict(module.hparams.encoder or {})
    base = encoder_settings.get("name_or_path", PACKAGED_MINILM)
    config = run["config"] or {}
    summary = run["summary"]
    metrics = summary.get("metrics") or {}
    examples = summary.get("examples") or {}
    scenario = _scenario(config)
    # The task shown in the usage example: a single-sentence classification, where there is one.
    task = next((t for t, k in module.task_types.items() if k.name == "classification"), None)
    is_hub_id = not Path(base).expanduser().exists() and base.count("/") <= 1
    # The Hub reads this front matter (YAML) as the model's metadata.
    lines = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        "tags: [sentence-transformers, feature-extraction, text-classification, mtl-lightning]",
        *([f"base_model: {base}"] if is_hub_id else []),
        "---",
        "",
    ]
    lines += [
        f"# Multi-task sentence encoder ({', '.join(module.tasks)})",
        "",
        "Trained with mtl-lightning: one shared encoder, one head per task. This "
        "folder is a sentence-transformers model, a plain Hugging Face model at its root, and "
        f"the task heads ({HEADS_WEIGHTS}, {HEADS_CONFIG}).",
        "",
        "## Base encoder",
        "",
        f"- `{base}`",
        f"- pooling: {module.encoder.pooling}; normalised: "
        f"{'yes' if module.encoder.normalize else 'no'}; max_seq_length: {max_seq_length}; "
        f"embedding dimension: {module.encoder.hidden_size}",
        f"- exported from `{ckpt_path.name}`",
        "",
        "## Tasks",
        "",
        "| task | type | labels | train | val | test |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for task, labels in module.tasks.items():
        sizes = examples.get(task) or {}
        counts = " | ".join(str(sizes.get(split, "-")) for split in ("train", "val", "test"))
        kind = module.task_types[task]
        shown = ", ".join(labels) or "scores in [{}, {}]".format(*kind.options["score_range"])
        lines.append(f"| {task} | {kind.name} | {shown} | {counts} |")
    if not examples:
        lines += ["", "Data sizes: not recorded (the run has no summary.json with `examples`)."]
    lines += ["", "## Freezing", ""]
    if scenario is None:
        lines.append("Scenario: not recorded.")
    else:
        lines.append(f"Scenario: `{scenario.name}`.")
        settings = scenario.settings()
        if settings:
            shown = ", ".join(f"`freezing.{k}={_value(v)}`" for k, v in settings.items())
            lines.append(f"Settings: {shown}.")
        groups = len(layer_groups(module.encoder.model))
        lines += ["", *scenario.schedule_lines(list(module.tasks), groups, _epochs(config))]
    lines += [
        "",
        "## Test metrics",
        "",
        "As the run reported them in summary.json (training tests its best checkpoint by "
        f"`{config.get('optimized_metric', 'val/acc_mean')}`). Forgetting is `val/<task>/"
        "forgetting` of `only_head_frozen` (the frozen task's accuracy when its head froze "
        "minus at the end); `-` where a value was not recorded.",
        "",
        "| task | accuracy (similarity: Spearman) | macro F1 (similarity: Pearson) | forgetting |",
        "| --- | --- | --- | --- |",
    ]
    for task, kind in module.task_types.items():
        first, second = ("spearman", "pearson") if kind.primary == "spearman" else ("acc", "f1")
        lines.append(
            f"| {task} | {_metric(metrics, f'test/{task}/{first}')} | "
            f"{_metric(metrics, f'test/{task}/{second}')} | "
            f"{_metric(metrics, f'val/{task}/forgetting')} |"
        )
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        'embeddings = SentenceTransformer("<this folder>").encode(["Who wrote Hamlet?"])',
        "",
    ]
    if task is not None:
        lines += [
            "# The heads without mtl-lightning: logits = embedding @ weight.T + bias",
            "from safetensors.numpy import load_file",
            "",
            f'heads = load_file("<this folder>/{HEADS_WEIGHTS}")  # label names: {HEADS_CONFIG}',
            f'weight, bias = heads["{task}.classifier.weight"], heads["{task}.classifier.bias"]',
            "logits = embeddings @ weight.T + bias",
        ]
    if any(len(k.columns) == 2 for k in module.task_types.values()):
        lines.append(f"# Pair and similarity heads: their `architecture` in {HEADS_CONFIG}.")
    lines += [
        "```",
        "",
        "`AutoModel.from_pretrained(<this folder>)` loads the encoder; pool its "
        "`last_hidden_state` as above (its pooler is not part of the trained model: its "
        "`pooler_output` is untrained).",
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
    return "\n".join(lines) + "\n"


def export_checkpoint(
    ckpt_path: str | Path,
    output: str | Path,
    max_length: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the export folder of a checkpoint (see the module docstring); return its path.
    `max_length` None: the `data.max_length` it was trained with, as `encode`'s default."""
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
        _write_export(ckpt_path, staging, max_length)
    return output


def _write_export(ckpt_path: Path, output: Path, max_length: int | None) -> None:
    """The export folder's files, written into `output` (a new, empty folder)."""
    module = load_module(ckpt_path, "ckpt_path")  # weights-only; a bad file is one sentence
    tokenizer = module.tokenizer()
    # The truncation `encode` applies (max_length, capped by positions and the tokenizer) is
    # the folder's max_seq_length: both then cut a long sentence at the same token.
    if max_length is None:
        max_length = trained_length(module)
    predictor = Predictor(module.encoder, tokenizer, device="cpu", max_length=max_length)
    started = time.time_ns() - 1_000_000_000  # file times may trail the clock by a tick
    module.encoder.model.save_pretrained(output)
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
    card = model_card(module, ckpt_path, read_run(ckpt_path), predictor.max_length, heads)
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
    folder = export_checkpoint(cfg.ckpt_path, cfg.output, cfg.max_length, cfg.overwrite)
    print(f"Exported {cfg.ckpt_path} to {folder}.", file=sys.stderr)
    if cfg.push_to_hub:
        url = push_to_hub(folder, str(cfg.push_to_hub))
        print(f"Pushed {folder} to {url}.", file=sys.stderr)
    return folder
