"""fork_from: only_head_frozen started from full_finetune's first epoch is the run from scratch."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from helpers import FULL_FINETUNE_RATES
from omegaconf import OmegaConf

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.train import train

# On data=tiny, classification has 7 train batches and sentiment 4: freezing sentiment's head
# leaves the epochs as long (joint sampling: the longest task), freezing classification's not.
# only_head_frozen's experiment ships its search's rates and a 2-epoch warm-up; a fork needs
# full_finetune's (the model's) and a config that differs only in the scenario.
OHF = (
    "experiment=only_head_frozen", "freezing.head=sentiment", "trainer.max_epochs=3",
    "freezing.fresh_head_warmup_epochs=1", *FULL_FINETUNE_RATES,
)  # fmt: skip


def _run(make_cfg, *overrides: str, output: str) -> dict[str, float]:
    """train() as the CLI runs it: Hydra's config copy in <run>/.hydra/config.yaml."""
    cfg = make_cfg(*overrides, output=output)
    folder = Path(cfg.paths.output_dir) / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    return train(cfg)


def _val_rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as file:
        return [r for r in csv.DictReader(file) if r.get("val/primary_mean")]


@pytest.fixture
def source(make_cfg, tmp_path) -> Path:
    """full_finetune for 3 epochs, keeping epoch 0's full state."""
    _run(make_cfg, "trainer.max_epochs=3", "fork_points=[0]", output="full")
    point = tmp_path / "full" / "checkpoints" / "epoch00.ckpt"
    assert point.is_file() and not (tmp_path / "full" / "checkpoints" / "epoch01.ckpt").exists()
    return point


@pytest.mark.slow
def test_only_head_frozen_forked_from_full_finetune_is_the_run_from_scratch(
    make_cfg, tmp_path, source
):
    scratch = _run(make_cfg, *OHF, output="scratch")
    forked = _run(make_cfg, *OHF, f"fork_from={source}", output="forked")
    # The last epoch's val and the best epoch's test (train/* of epoch 0 only lives on in the
    # process that trained it: here, the source).
    evaluated = sorted(k for k in scratch if k.startswith(("val/", "test/")))
    assert sorted(k for k in forked if k.startswith(("val/", "test/"))) == evaluated
    for key in evaluated:
        assert forked[key] == pytest.approx(scratch[key], rel=1e-5, abs=1e-6), key
    assert forked["val/sentiment/forgetting"] == scratch["val/sentiment/forgetting"]
    # Epoch 0's rows come from the source's metrics.csv, the later ones from the fork itself.
    mine, theirs = _val_rows(tmp_path / "forked"), _val_rows(tmp_path / "scratch")
    assert [r["epoch"] for r in mine] == [r["epoch"] for r in theirs] == ["0", "1", "2"]
    for row, other in zip(mine, theirs, strict=True):
        for key in ("val/primary_mean", "val/sentiment/acc", "val/classification/loss"):
            assert float(row[key]) == pytest.approx(float(other[key]), abs=1e-6), key
    weights = {}
    for run in ("scratch", "forked"):
        checkpoint = torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)
        weights[run] = checkpoint["state_dict"]
    for name, value in weights["scratch"].items():
        torch.testing.assert_close(weights["forked"][name], value, rtol=1e-5, atol=1e-6)
    # The same best epoch, written in the fork's own folder; the fork file is gone after fit.
    best = sorted(p.name for p in (tmp_path / "scratch" / "checkpoints").glob("best-*.ckpt"))
    assert sorted(p.name for p in (tmp_path / "forked" / "checkpoints").glob("*.ckpt")) == sorted(
        [*best, "last.ckpt"]
    )
    summary = json.loads((tmp_path / "forked" / "summary.json").read_text())
    assert summary["fork"]["from"] == str(source)
    assert summary["fork"]["scenario"] == "full_finetune"
    assert summary["fork"]["epochs"] == 1
    assert 0 < summary["fork"]["train_seconds"] < summary["train_seconds"]
    assert json.loads((tmp_path / "scratch" / "summary.json").read_text())["fork"] is None


@pytest.mark.slow
def test_a_sweep_folder_gives_each_run_the_fork_that_fits_or_none(make_cfg, tmp_path, source):
    sweep = tmp_path  # holds full/ (and each new run's folder)
    _run(make_cfg, *OHF, f"fork_from={sweep}", output="ohf")
    assert json.loads((tmp_path / "ohf" / "summary.json").read_text())["fork"]["epochs"] == 1
    for scenario in ("only_transformer_frozen", "gradual_unfreeze", "entire_network_frozen"):
        _run(make_cfg, f"experiment={scenario}", f"fork_from={sweep}", output=scenario)
        assert json.loads((tmp_path / scenario / "summary.json").read_text())["fork"] is None
    # Another seed's epoch 0 is another epoch 0.
    _run(make_cfg, *OHF, "seed=7", f"fork_from={sweep}", output="seed7")
    assert json.loads((tmp_path / "seed7" / "summary.json").read_text())["fork"] is None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("freezing.head=classification",), r"epoch 1 has 7 batches in full_finetune and 4 here"),
        (("model.lr=1e-3",), r"its config differs in model\.lr \(5e-05 there, 0.001 here\)"),
        (
            # full_finetune's rates, so that only the scenario differs
            ("experiment=gradual_unfreeze", *FULL_FINETUNE_RATES, "model.layerwise_lr_decay=1"),
            "gradual_unfreeze neither forks nor is forked from",
        ),
        (
            ("experiment=only_transformer_frozen", "model.head_lr=1e-3"),
            r"in epoch 0 full_finetune trains heads \['classification', 'sentiment'\] and 4 "
            r"encoder groups, only_transformer_frozen .* and 0",
        ),
    ],
)
def test_a_fork_that_would_not_be_exact_is_refused(make_cfg, tmp_path, source, overrides, message):
    with pytest.raises(ConfigError, match=rf"fork_from=.*cannot start this run exactly: {message}"):
        # Another experiment: without only_head_frozen's keys.
        mine = OHF if not overrides[0].startswith("experiment=") else OHF[2:]
        _run(make_cfg, *mine, *overrides, f"fork_from={source}", output="refused")
    assert not (tmp_path / "refused" / "checkpoints").exists()


@pytest.mark.slow
def test_fork_from_needs_an_epoch_end_in_a_run_folder(make_cfg, tmp_path, source):
    steps = (
        "+callbacks.steps._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        f"+callbacks.steps.dirpath={tmp_path / 'mid' / 'checkpoints'}",
        "+callbacks.steps.every_n_train_steps=3",
        "+callbacks.steps.save_top_k=-1",
    )
    _run(make_cfg, "trainer.max_epochs=3", *steps, output="mid")
    (mid,) = (tmp_path / "mid" / "checkpoints").glob("*step=3.ckpt")
    with pytest.raises(ConfigError, match="it was written mid-epoch"):
        _run(make_cfg, *OHF, f"fork_from='{mid}'", output="refused")
    loose = tmp_path / "loose.ckpt"
    loose.write_bytes(source.read_bytes())
    with pytest.raises(ConfigError, match=r"has no .*\.hydra/config\.yaml: fork from a checkpoint"):
        _run(make_cfg, *OHF, f"fork_from={loose}", output="refused")
    with pytest.raises(ConfigError, match="entire_network_frozen trains nothing"):
        _run(make_cfg, "experiment=entire_network_frozen", f"fork_from={source}", output="no")
    with pytest.raises(ConfigError, match="ckpt_path and fork_from both"):
        _run(make_cfg, *OHF, f"fork_from={source}", f"ckpt_path={source}", output="no")
    with pytest.raises(ConfigError, match=r"fork_points=.* must be a list of epochs"):
        _run(make_cfg, "fork_points=[-1]", output="no")


@pytest.mark.slow
def test_a_later_fork_point_copies_the_best_checkpoint_and_a_resumed_fork_keeps_its_record(
    make_cfg, tmp_path
):
    """Epoch 1's state. A run that scores those epochs (full_finetune: every score ties, as
    nothing learns, and the first stays best) gets the source's best checkpoint of epoch 0
    copied; only_head_frozen, whose joint warm-up they are, starts its choice afresh, as from
    scratch. Then the fork resumed one epoch further."""
    still = ("model.lr=0", "model.head_lr=0")
    full = ("trainer.max_epochs=3", "fork_points=[1]", *still)
    _run(make_cfg, *full, output="full")
    point = tmp_path / "full" / "checkpoints" / "epoch01.ckpt"
    _run(make_cfg, *full, f"fork_from={point}", output="again")
    names = {p.name for p in (tmp_path / "again" / "checkpoints").glob("*.ckpt")}
    assert names == {"best-epoch00.ckpt", "last.ckpt"}  # its epoch 1 trained in the source
    later = (*OHF, "freezing.head_warmup_epochs=2", *still)
    scratch = _run(make_cfg, *later, "fork_points=[1]", output="scratch")
    forked = _run(make_cfg, *later, f"fork_from={point}", output="forked")
    assert forked["test/primary_mean"] == scratch["test/primary_mean"]
    assert forked["val/sentiment/forgetting"] == scratch["val/sentiment/forgetting"] == 0.0
    for run, kept in [("scratch", {"epoch01.ckpt"}), ("forked", set())]:  # best: the first
        names = {p.name for p in (tmp_path / run / "checkpoints").glob("*.ckpt")}  # frozen epoch
        assert names == {"best-epoch02.ckpt", "last.ckpt", *kept}, run
    # The other way, full_finetune would have kept a best of epochs only_head_frozen scored not.
    joint = tmp_path / "scratch" / "checkpoints" / "epoch01.ckpt"
    with pytest.raises(ConfigError, match=r"among epochs \[0, 1\] of the first 2, only_head_f"):
        _run(make_cfg, *full, f"fork_from={joint}", output="refused")
    assert json.loads((tmp_path / "forked" / "summary.json").read_text())["fork"]["epochs"] == 2
    last = tmp_path / "forked" / "checkpoints" / "last.ckpt"
    further = (*later, "trainer.max_epochs=4")
    _run(make_cfg, *further, f"ckpt_path={last}", output="forked")
    summary = json.loads((tmp_path / "forked" / "summary.json").read_text())
    assert summary["fork"]["from"] == str(point.resolve())
    # Gone from the source: a fork could not choose its best epoch as the run from scratch did.
    (tmp_path / "full" / "checkpoints" / "best-epoch00.ckpt").unlink()
    with pytest.raises(ConfigError, match=r"best checkpoint .*best-epoch00\.ckpt .* is gone"):
        _run(make_cfg, *full, f"fork_from={point}", output="refused")
    assert not (tmp_path / "refused" / "checkpoints").exists()
    _run(make_cfg, *later, f"fork_from={point}", output="needs_none")  # it copies none


@pytest.mark.slow
def test_a_folder_search_passes_over_what_it_cannot_read(make_cfg, tmp_path, source):
    broken = tmp_path / "broken" / "checkpoints"
    broken.mkdir(parents=True)
    (broken / "epoch05.ckpt").write_text("not a checkpoint")  # the latest epoch: tried first
    _run(make_cfg, *OHF, f"fork_from={tmp_path}", output="ohf")
    assert json.loads((tmp_path / "ohf" / "summary.json").read_text())["fork"]["epochs"] == 1
    with pytest.raises(ConfigError, match="it is this run's own folder"):
        _run(make_cfg, *OHF, f"fork_from={source}", output="full")
