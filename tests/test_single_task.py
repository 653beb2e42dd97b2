"""Single-task baselines: `experiment=single_task data.only_tasks=<task>` keeps one task."""

from __future__ import annotations

import pytest

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.train import build_data


def test_single_task_experiment_keeps_one_task_with_full_finetunes_settings(make_cfg):
    cfg = make_cfg("experiment=single_task", "data.only_tasks=sentiment")
    full = make_cfg("experiment=full_finetune")
    assert cfg.freezing._target_.endswith("SingleTask") and cfg.run_name == "single_task_sentiment"
    assert cfg.trainer.max_epochs == full.trainer.max_epochs
    datamodule = build_data(cfg.data)
    assert list(datamodule.label_names) == ["sentiment"]
    # The same test split as the multi-task run of the same seed: the pairs of the paired tests.
    both = build_data(full.data)
    assert datamodule.datasets["sentiment"]["test"] == both.datasets["sentiment"]["test"]


def test_only_tasks_names_unknown_tasks(make_cfg):
    cfg = make_cfg("data.only_tasks=[sentiment,topic]")
    with pytest.raises(ConfigError, match=r"data\.only_tasks=\['sentiment', 'topic'\] names tasks"):
        build_data(cfg.data)


def test_single_task_experiment_needs_its_task(make_cfg):
    """Without data.only_tasks it is no baseline of all tasks, but an error naming the key."""
    cfg = make_cfg("experiment=single_task")
    with pytest.raises(
        ConfigError, match=r"^data\.only_tasks=\['<task>'\] names tasks .* use some of"
    ):
        build_data(cfg.data)
