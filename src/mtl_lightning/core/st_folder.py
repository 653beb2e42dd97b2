"""Sentence-transformers folders: the pooling, normalisation and length they declare; writing one.

A sentence-transformers folder is a Hugging Face model plus `modules.json` (the module chain:
Transformer, Pooling, optionally Normalize), `1_Pooling/config.json` and
`sentence_bert_config.json` (`max_seq_length`). Both the files of sentence-transformers 2-5
(`pooling_mode_mean_tokens: true`, `max_seq_length` in `sentence_bert_config.json`) and those of
6.x (`pooling_mode: "mean"`, the length as the tokenizer's `model_max_length`) are read; the
older ones are written, since every sentence-transformers version since 2.0 loads them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mtl_lightning.core.errors import ConfigError

MODULES_FILE = "modules.json"
ST_CONFIG_FILE = "sentence_bert_config.json"
# sentence-transformers' pooling modes, old boolean keys and 6.x names, as our pooling names;
# modes that we do not implement keep their own name and are refused where they would be used.
LEGACY_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Module types written to modules.json: the names every sentence-transformers version resolves.
TRANSFORMER_TYPE = "sentence_transformers.models.Transformer"
POOLING_TYPE = "sentence_transformers.models.Pooling"
NORMALIZE_TYPE = "sentence_transformers.models.Normalize"


@dataclass(frozen=True)
class SentenceTransformerSettings:
    """What a sentence-transformers folder declares about turning token states into a vector."""

    pooling: str  # mean | cls | max, or another sentence-transformers mode (not supported here)
    normalize: bool
    max_seq_length: int | None  # None: the folder leaves it to the tokenizer
    transformer_path: str  # the Hugging Face model's folder inside, "" for the root
    unused_modules: tuple[str, ...]  # modules after pooling that our Encoder does not run


def _read_json(path: Path) -> dict | list:
    return json.loads(path.read_text(encoding="utf-8"))


def _module_kind(module_type: str) -> str:
    """`Transformer`, `Pooling`, `Normalize`, ... from a module's dotted type name."""
    return module_type.rsplit(".", 1)[-1]


def read_settings(folder: str | Path) -> SentenceTransformerSettings | None:
    """The folder's settings, or None when it has no `modules.json` (a plain HF model)."""
    folder = Path(folder)
    if not (folder / MODULES_FILE).is_file():
        return None
    modules = _read_json(folder / MODULES_FILE)
    kinds = {_module_kind(m["type"]): module_path(folder, m) for m in modules}
    transformer_path = kinds.get("Transformer", "")
    pooling = "mean"  # sentence-transformers' own default when a folder names no Pooling
    if "Pooling" in kinds:
        pooling = pooling_name(_read_json(folder / kinds["Pooling"] / "config.json"))
    st_config = folder / transformer_path / ST_CONFIG_FILE
    max_seq_length = _read_json(st_config).get("max_seq_length") if st_config.is_file() else None
    unused = tuple(k for k in kinds if k not in ("Transformer", "Pooling", "Normalize"))
    return SentenceTransformerSettings(
        pooling=pooling,
        normalize="Normalize" in kinds,
        max_seq_length=max_seq_length,
        transformer_path=transformer_path,
        unused_modules=unused,
    )


def module_path(folder: Path, module: dict) -> str:
    """A module's `path` from `modules.json`, refused when it leaves `folder` (`../x`, `/x`):
    a folder's modules are read from inside it only."""
    path = module.get("path", "")
    root = folder.resolve()
    if not isinstance(path, str) or not (root / path).resolve().is_relative_to(root):
        raise ConfigError(
            f"{folder / MODULES_FILE} gives module {module.get('name', '?')} the path {path!r}, "
            "which leaves the folder: a sentence-transformers folder's modules lie inside it; "
            "fix modules.json or use another model folder."
        )
    return path


def pooling_name(config: dict) -> str:
    """The pooling of a `1_Pooling/config.json`: its one mode, or `a+b` for a concatenation."""
    mode = config.get("pooling_mode")
    if mode is None:
        modes = [name for key, name in LEGACY_POOLING_KEYS.items() if config.get(key)]
        mode = modes or ["mean"]
    return mode if isinstance(mode, str) else "+".join(mode)


def hub_folder(repo_id: str, local_files_only: bool) -> Path | None:
    """The local snapshot folder holding a hub model's sentence-transformers files, fetching
    those few small files when the hub is reachable; None for a plain HF model."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    def fetch(filename: str) -> Path | None:
        try:
            return Path(hf_hub_download(repo_id, filename, local_files_only=local_files_only))
        except (EntryNotFoundError, OSError):  # not there, or not cached and offline
            return None

    modules = fetch(MODULES_FILE)
    if modules is None:
        return None
    for module in _read_json(modules):
        kind, path = _module_kind(module["type"]), module_path(modules.parent, module)
        if kind == "Pooling":
            fetch(f"{path}/config.json")
        elif kind == "Transformer":
            fetch(f"{path}/{ST_CONFIG_FILE}".lstrip("/"))
    return modules.parent


def write_folder(
    folder: Path,
    hidden_size: int,
    pooling: str,
    normalize: bool,
    max_seq_length: int,
    versions: dict[str, str],
) -> None:
    """Write the sentence-transformers files around a model saved at the root of `folder`.

    `do_lower_case` stays false: the tokenizer lowercases by itself where its vocabulary needs it.
    """
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": TRANSFORMER_TYPE},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": POOLING_TYPE},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": NORMALIZE_TYPE})
        (folder / "2_Normalize").mkdir(parents=True, exist_ok=True)
    pooling_config = {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    files = {
        MODULES_FILE: modules,
        ST_CONFIG_FILE: {"max_seq_length": max_seq_length, "do_lower_case": False},
        "config_sentence_transformers.json": {
            "__version__": versions,
            "prompts": {},
            "default_prompt_name": None,
            # Cosine is what a normalised model's dot product already is; for an unnormalised
            # one it is the usual comparison of sentence embeddings.
            "similarity_fn_name": "cosine",
        },
        "1_Pooling/config.json": pooling_config,
    }
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
