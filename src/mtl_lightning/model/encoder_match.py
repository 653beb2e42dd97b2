"""Whether a checkpoint's encoder reads sentences as this run's does (resume, `model.init_from`).

The weights come from the checkpoint, but the tokenizer, the pooling and the normalisation come
from this run's config. Another tokenizer turns the same sentence into other ids (an uncased
vocabulary read by a cased tokenizer: `What does NASA stand for?` becomes `[UNK] does [UNK]
...`); another pooling hands the heads embeddings they were not trained on; another architecture
does not fit the weights at all. Each is refused in one sentence before anything trains.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.data.datamodule import MultiTaskDataModule
from mtl_lightning.model.adapters import adapter_attributes, to_adapted
from mtl_lightning.model.module import MultiTaskModule, tokenizer_from_files

log = logging.getLogger(__name__)
# Case, accents, digits, punctuation and a script outside Latin: where tokenizers differ.
PROBE = "What does NASA stand for? Café, naïve, 1,234.5 km; 東京."


def same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """The same vocabulary, and the same ids for a sentence that tells normalisations apart."""
    return a.get_vocab() == b.get_vocab() and a(PROBE)["input_ids"] == b(PROBE)["input_ids"]


def _word(value: object) -> str:
    """A setting as it is typed: `false`, not Python's `False`."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _shown(tokenizer: PreTrainedTokenizerBase) -> str:
    return " ".join(tokenizer.tokenize(PROBE)[:8])


def check_same_encoder(
    checkpoint: Mapping[str, Any],
    module: MultiTaskModule,
    datamodule: MultiTaskDataModule,
    key: str,
    path: str | Path,
) -> None:
    """Refuse `checkpoint` (given as `key=path`) whose encoder has other weight shapes, another
    pooling or normalisation, or another tokenizer than this run's `module` and the tokenizer
    its data is tokenized with (`datamodule`, set up)."""
    tokenizer, tokenizer_name = datamodule.tokenizer, datamodule.tokenizer_name
    hparams = checkpoint["hyper_parameters"]
    saved = hparams.get("encoder") if isinstance(hparams.get("encoder"), Mapping) else {}
    saved_name = saved.get("name_or_path", "its encoder")
    name = (module.hparams.encoder or {}).get("name_or_path")
    where = f"{key}={path}"

    # Adapters (lora) are not the encoder: a run may add one (a new task's); loading the state
    # dict checks them.
    adapters = adapter_attributes(module.encoder.model) if module.hparams.get("adapters") else ()

    def base(key: str) -> bool:
        return key.startswith("encoder.") and not any(f".{a}." in key for a in adapters)

    encoder = module.encoder.state_dict(prefix="encoder.")
    mine = {k: tuple(v.shape) for k, v in encoder.items() if base(k)}
    names = to_adapted(checkpoint["state_dict"], mine) if adapters else {}
    theirs = {
        names.get(k, k): tuple(v.shape) for k, v in checkpoint["state_dict"].items() if base(k)
    }
    if mine != theirs:
        different = sorted(set(mine) ^ set(theirs)) or sorted(
            k for k in mine if mine[k] != theirs[k]
        )
        config = hparams.get("encoder_config")
        saved_type = config.get("model_type") if isinstance(config, Mapping) else None
        raise ConfigError(
            f"{where} holds a {saved_type or 'another'} encoder that does not fit "
            f"model.encoder.name_or_path={name} ({module.encoder.model.config.model_type}; "
            f"e.g. {different[0]} differs): set model.encoder.name_or_path={saved_name}, the "
            "encoder it was trained from."
        )

    changed = {
        f"model.encoder.{setting}": (_word(saved[setting]), _word(getattr(module.encoder, setting)))
        for setting in ("pooling", "normalize")
        if saved.get(setting) is not None and saved[setting] != getattr(module.encoder, setting)
    }
    if changed:
        then = " and ".join(f"{k}={v[0]}" for k, v in changed.items())
        now = " and ".join(f"{k}={v[1]}" for k, v in changed.items())
        raise ConfigError(
            f"{where} was trained with {then}, and its heads read embeddings made that way, but "
            f"this run has {now}: set {then}."
        )

    files = checkpoint.get("tokenizer_files")
    if files:
        stored = tokenizer_from_files(files)
        if not same_tokenizer(stored, tokenizer):
            raise ConfigError(
                f"{where} was trained with another tokenizer than this run's "
                f"data.tokenizer={tokenizer_name}: it reads {PROBE!r} as "
                f"'{_shown(stored)} ...', this run as '{_shown(tokenizer)} ...'; set "
                f"model.encoder.name_or_path and data.tokenizer to {saved_name}, the encoder it "
                "was trained from."
            )
    if name != saved_name:
        log.warning(
            "%s was trained from the encoder %s; this run names %s, whose tokenizer, pooling and "
            "weight shapes are the same: the checkpoint's weights are used.",
            where,
            saved_name,
            name,
        )
