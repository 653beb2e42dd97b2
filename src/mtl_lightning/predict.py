"""Predict every task's label with a trained checkpoint; `predict(cfg)` does the work.

python -m mtl_lightning.predict ckpt_path=<run>/checkpoints/last.ckpt input=a.txt output=b.jsonl
python -m mtl_lightning.predict ckpt_path=<run>/checkpoints/last.ckpt text="Who wrote Hamlet?"
python -m mtl_lightning.predict ckpt_path=<ckpt> text="A man sings." text_pair="A man is singing."
"""

from __future__ import annotations

import json
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mtl_lightning.config_check import check_predict_config
from mtl_lightning.core.errors import ConfigError, one_line_errors
from mtl_lightning.model.inference import Predictor, check_output, read_rows, write_jsonl


def as_typed(cfg: DictConfig, key: str) -> str | None:
    """The sentence `key=` gives, as the user typed it. Hydra types an unquoted override
    (`text=true` is True, `text=1e3` is 1000.0), so the raw override is read back; without
    Hydra's command line, a value that is not a string is refused."""
    value = cfg.get(key)
    if value is None or isinstance(value, str):
        return value
    if HydraConfig.initialized():
        for override in reversed(HydraConfig.get().overrides.task):  # the last one wins
            name, equals, raw = override.partition("=")
            if equals and name.lstrip("+") == key:
                return raw
    raise ConfigError(
        f"{key}={value} is not a string (Hydra reads an unquoted true, 42 or 1e3 as a value): "
        f"""quote it inside the shell's quotes, e.g. {key}='"{value}"'."""
    )


def predict(cfg: DictConfig) -> list[dict]:
    """Write `output` (or print the one `text`'s JSON line); return the predictions."""
    check_predict_config(cfg)
    if cfg.ckpt_path is None:
        raise ConfigError("ckpt_path is missing: give ckpt_path=<run>/checkpoints/last.ckpt.")
    if (cfg.text is None) == (cfg.input is None) or (cfg.input is None) != (cfg.output is None):
        raise ConfigError(
            "Give either input=<file> and output=<file.jsonl>, or text=<one sentence>: "
            f"got input={cfg.input}, output={cfg.output}, text={cfg.text}."
        )
    # Bad files fail before the model loads.
    text, text_pair = as_typed(cfg, "text"), as_typed(cfg, "text_pair")
    if text_pair is not None and text is None:
        raise ConfigError("text_pair is the second sentence of text=: give text= too.")
    if cfg.text is None:
        rows = read_rows(cfg.input)
        output = check_output(cfg.output, (".jsonl",), cfg.input)
    else:
        rows = [{"text": text}]
        if text_pair is not None:
            rows[0]["text_pair"] = text_pair
    predictor = Predictor.from_checkpoint(
        cfg.ckpt_path, device=cfg.device, batch_size=cfg.batch_size, max_length=cfg.max_length
    )
    predictions = predictor.predict(rows)
    if cfg.text is None:
        replaced = " (replacing the file that was there)" if output.exists() else ""
        write_jsonl(output, predictions)
        print(f"Wrote {len(predictions)} predictions to {output}{replaced}.", file=sys.stderr)
    else:
        print(json.dumps(predictions[0], ensure_ascii=False))
    return predictions


@hydra.main(version_base="1.3", config_path="../../conf", config_name="predict")
@one_line_errors
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
