"""Adapters on the shared encoder (PEFT: LoRA and its kin), built from plain settings.

A scenario that trains adapters (`mtl_lightning.scenarios.lora`) gives the module its adapter
settings, `MultiTaskModule(adapters=...)`:

    {"peft_type": "LORA",                   # a PEFT method, by PEFT's own registered name
     "config": {"r": 8, "lora_alpha": 16,   # that method's config, as keyword arguments
                "lora_dropout": 0.1, "target_modules": None},
     "layers": None,                        # the transformer layers to adapt (None: all)
     "frozen_below": 0,                     # no adapter on the layers below this one
     "names": ["shared"],                   # the adapters: one shared, or one per task
     "per_task": False}                     # True: each task's batches use the adapter `task`

`add_adapters` injects them into the Hugging Face model in place with PEFT (its own weights keep
their place: an adapted `nn.Linear` becomes PEFT's layer around it, `base_layer`), and returns
the settings resolved for that model (`target_modules` null: every `nn.Linear` inside the
transformer layers, found for any architecture; names: the full module names), which the module
stores as its hyperparameter. A checkpoint thus holds plain values only, and nothing is imported
by a dotted path: the method is looked up in PEFT's registry of config types.

`activate` switches the adapter that runs (per task batch), leaving `requires_grad` as the
freezing schedule set it; `plain_copy` gives the encoder without adapter layers (one adapter
merged into it, or none) and `write_adapter` a PEFT adapter folder, for export.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from mtl_lightning.core.errors import ConfigError

SHARED = "shared"  # the adapter's name when all tasks share one
SPEC_KEYS = ("peft_type", "config", "layers", "frozen_below", "names", "per_task")
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # PEFT's file names: `load_adapter` reads them
ADAPTER_CONFIG = "adapter_config.json"


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError(
            "Adapters need the peft library, which is not installed: pip install "
            "'mtl-lightning[adapters]' (or pip install peft), or choose another experiment."
        ) from None
    return peft


def _tuner_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def _stack_prefix(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The full module name of the transformer layer stack, and the stack."""
    from mtl_lightning.model.encoder import layer_stack

    layers = layer_stack(model)[2]
    name = next(name for name, module in model.named_modules() if module is layers)
    return name, layers


def resolve_targets(
    model: nn.Module, target_modules: list[str] | None, layers: list[int] | None, below: int = 0
) -> list[str]:
    """The full names of the `nn.Linear` modules to adapt: inside the transformer layers `layers`
    (None: all; none below `below`), those whose name is or ends with one of `target_modules`
    (None: every one: the attention and feed-forward projections of any architecture)."""
    prefix, stack = _stack_prefix(model)
    if layers is not None:
        wrong = [i for i in layers if not 0 <= i < len(stack)]
        if wrong:
            raise ConfigError(
                f"freezing.layers={list(layers)} holds {wrong}, not a layer of this encoder: use "
                f"indices from 0 (the bottom layer) to {len(stack) - 1}, or null for every layer."
            )
    chosen = [i for i in (range(len(stack)) if layers is None else layers) if i >= below]
    linears = {
        f"{prefix}.{i}.{name}": name
        for i in chosen
        for name, module in stack[i].named_modules()
        if isinstance(module, nn.Linear) and name
    }
    if target_modules is None:
        found = list(linears)
    else:

        def matches(full: str, target: str) -> bool:
            return full == target or full.endswith(f".{target}")

        unmatched = [t for t in target_modules if not any(matches(f, t) for f in linears)]
        if unmatched:
            names = sorted({name.rsplit(".", 1)[-1] for name in linears.values()})
            raise ConfigError(
                f"freezing.target_modules={list(target_modules)}: {unmatched} names no nn.Linear "
                f"inside the adapted transformer layers: use some of {names}, or null for all."
            )
        found = [f for f in linears if any(matches(f, t) for t in target_modules)]
    if not found:
        raise ConfigError(
            f"freezing.layers={layers} with freezing.keep_frozen_layers={below} leaves no layer "
            "to adapt: choose layers above the kept frozen ones."
        )
    return found


def _config(spec: Mapping[str, Any], targets: list[str]):
    """A fresh PEFT config object of the spec (each adapter gets its own)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    peft_type = spec["peft_type"]
    if peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise ConfigError(
            f"Adapter method {peft_type} is not one of PEFT's: use one of "
            f"{sorted(str(t.value) for t in PEFT_TYPE_TO_CONFIG_MAPPING)}."
        )
    try:
        return PEFT_TYPE_TO_CONFIG_MAPPING[peft_type](
            **{**spec["config"], "target_modules": targets}
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"PEFT refuses the {peft_type} adapter settings: {error}") from None


def add_adapters(model: nn.Module, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Inject the adapters of `spec` into `model` (in place); return `spec` resolved for it.

    Every parameter requires grad afterwards, as in a freshly loaded model: the freezing schedule
    decides what trains. The first adapter is the active one."""
    _peft()
    from peft import inject_adapter_in_model

    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown or not spec.get("names"):
        raise ConfigError(
            f"The adapter settings {dict(spec)} are not this project's (unknown {unknown}, or no "
            "names): give a checkpoint written by mtl_lightning.train."
        )
    config = dict(spec["config"])
    targets = resolve_targets(
        model, config.get("target_modules"), spec.get("layers"), spec.get("frozen_below") or 0
    )
    configs = {}
    for name in spec["names"]:
        configs[name] = _config(spec, targets)
        with warnings.catch_warnings():  # several adapters on one model are what is meant
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            inject_adapter_in_model(configs[name], model, adapter_name=name)
    # PEFT keeps the latest adapter's config on the model; its functions (the adapter state
    # dict) and transformers' adapter methods look every adapter up there.
    model.peft_config = configs
    for param in model.parameters():
        param.requires_grad_(True)
    activate(model, spec["names"][0])
    resolved = {key: spec.get(key) for key in SPEC_KEYS}
    resolved["config"] = {**config, "target_modules": targets}
    resolved["names"] = list(spec["names"])
    resolved["frozen_below"] = spec.get("frozen_below") or 0
    resolved["per_task"] = bool(spec.get("per_task"))
    return resolved


def adapter_parts(model: nn.Module) -> dict[str, tuple[list[nn.Parameter], list[nn.Module]]]:
    """{adapter name: (its parameters, its modules: the layers holding them and its dropouts)},
    found through PEFT's own lists of a tuner layer's per-adapter attributes, so for any method."""
    parts: dict[str, tuple[list[nn.Parameter], list[nn.Module]]] = {}
    for layer in _tuner_layers(model):
        for attribute in (*layer.adapter_layer_names, *layer.other_param_names):
            holder = getattr(layer, attribute, None)
            if not isinstance(holder, nn.ModuleDict | nn.ParameterDict):
                continue
            for name, value in holder.items():
                params, modules = parts.setdefault(name, ([], []))
                if isinstance(value, nn.Module):
                    modules.append(value)
                    params.extend(value.parameters())
                else:
                    params.append(value)
    return parts


def adapter_attributes(model: nn.Module) -> frozenset[str]:
    """The attribute names under which `model`'s PEFT layers hold per-adapter weights (LoRA:
    `lora_A`, `lora_B`, ...): a state-dict key holding `.<one of them>.` is an adapter's."""
    return frozenset(
        attribute
        for layer in _tuner_layers(model)
        for attribute in (*layer.adapter_layer_names, *layer.other_param_names)
    )


def to_adapted(keys: Iterable[str], adapted: Collection[str]) -> dict[str, str]:
    """{key: its name in the adapted model}: a plain model's `<module>.<param>` is
    `<module>.base_layer.<param>` where PEFT wrapped that module (a checkpoint trained without
    adapters, loaded into a model with them: its weights are the base)."""
    renamed = {}
    for key in keys:
        module, _, param = key.rpartition(".")
        wrapped = f"{module}.base_layer.{param}"
        renamed[key] = wrapped if key not in adapted and wrapped in adapted else key
    return renamed


def activate(model: nn.Module, name: str | None) -> None:
    """Run the adapter `name` from now on (None: none, the base model alone). PEFT's switch also
    sets which adapter requires grad; that is the freezing schedule's to say, so it is put back."""
    for layer in _tuner_layers(model):
        flags = [(param, param.requires_grad) for param in layer.parameters()]
        if name is None:
            layer.enable_adapters(False)
        else:
            if layer.disable_adapters:
                layer.enable_adapters(True)
            layer.set_adapter(name)
        for param, flag in flags:
            param.requires_grad_(flag)


def plain_copy(model: nn.Module, merge: str | None = None) -> nn.Module:
    """A copy of `model` without adapter layers, the adapter `merge` merged into its weights first
    (None: the base model's weights as they are): a plain Hugging Face model again."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    plain = copy.deepcopy(model)
    layers = [(n, m) for n, m in plain.named_modules() if isinstance(m, BaseTunerLayer)]
    for full_name, layer in layers:
        if merge is not None:
            layer.merge(adapter_names=[merge])
        parent_name, _, child = full_name.rpartition(".")
        setattr(plain.get_submodule(parent_name), child, layer.get_base_layer())
    for attribute in ("peft_config", "_hf_peft_config_loaded"):
        if attribute in plain.__dict__:
            delattr(plain, attribute)
    return plain


def write_adapter(model: nn.Module, name: str, folder: Path, base: str | None = None) -> None:
    """The adapter `name` as a PEFT adapter folder (`adapter_config.json`,
    `adapter_model.safetensors`), which PEFT, transformers' and sentence-transformers'
    `load_adapter(folder, adapter_name=...)` read into the base model."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(model, adapter_name=name)
    # Keyed as a PeftModel saves them: the base model's module names under `base_model.model.`.
    tensors = {f"base_model.model.{k}": v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = copy.deepcopy(model.peft_config[name])
    config.base_model_name_or_path = base
    config.save_pretrained(str(folder))
    # PEFT writes the set of target modules in no fixed order: sorted, the file is reproducible.
    path = folder / ADAPTER_CONFIG
    saved = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(saved.get("target_modules"), list):
        saved["target_modules"] = sorted(saved["target_modules"])
    path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n", encoding="utf-8")
