"""Issue 15, library core: one test per defect (wrong results, bad input, faults). Each failed before its fix.

The vector-quantizer defects are tested in test_quantizer.py (restart in the same step, restart grace,
float32 under bf16 autocast).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import foresight
from foresight.checkpoint import CheckpointError
from foresight.config import ConfigError, build_config, preset
from foresight.models.baselines import ConvPredictor, ConvPredictorConfig
from foresight.testing import SyntheticClips
from foresight.train import TrainConfig, Trainer


def _train_config(**kw) -> TrainConfig:
    base = dict(steps=3, batch_size=4, lr=3e-3, warmup_steps=1, log_every=1, eval_every=0, save_every=0,
                progress=False, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- wrong results


class LossInMetrics(ConvPredictor):
    """Reports its loss inside its metrics too, as GHVAE does."""

    def loss(self, batch):
        loss, metrics = super().loss(batch)
        return loss, {**metrics, "loss": float(loss.detach()), "loss_copy": float(loss.detach())}


def test_logged_loss_is_not_doubled_when_the_metrics_hold_it(tmp_path):
    torch.manual_seed(0)
    model = LossInMetrics(preset(ConvPredictorConfig, "tiny"))
    data = SyntheticClips(16, image_size=16)
    Trainer(model, data, config=_train_config(), run_dir=tmp_path / "r",
            eval_dataset=SyntheticClips(8, seed=1, image_size=16)).fit()
    rows = _rows(tmp_path / "r")
    assert {r["split"] for r in rows} == {"train", "eval"}
    for r in rows:  # train log (also what the progress bar shows) and eval log
        assert r["loss"] == pytest.approx(r["loss_copy"], rel=1e-6), r
        assert r["loss"] == pytest.approx(r["mse"], rel=1e-6), r


def test_harp_embeddings_and_position_tables_get_no_weight_decay(tmp_path):
    from foresight.models.harp import Harp, HarpConfig

    torch.manual_seed(0)
    model = Harp(preset(HarpConfig, "tiny"))
    trainer = Trainer(model, SyntheticClips(4, image_size=16), config=_train_config(batch_size=2, weight_decay=0.1),
                      run_dir=tmp_path / "r", stage="transformer")
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for g in trainer.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {names[id(p)] for g in trainer.optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    tr = "transformer."
    for table in ("tok_emb.weight", "time_emb", "row_emb", "col_emb", "start"):
        assert tr + table in no_decay, table
    # Besides those tables only biases and norm gains go undecayed; every linear / conv weight is decayed.
    owner = {id(p): m for m in model.modules() for p in m.parameters(recurse=False)}
    norms = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
    for n in no_decay - {tr + t for t in ("tok_emb.weight", "time_emb", "row_emb", "col_emb", "start")}:
        p = dict(model.named_parameters())[n]
        assert n.endswith("bias") or isinstance(owner[id(p)], norms), n
    linear = [n for n, p in model.named_parameters() if p.requires_grad and n.endswith("weight")
              and isinstance(owner[id(p)], (nn.Linear, nn.modules.conv._ConvNd))]
    assert set(linear) == decay and tr + "head.weight" in decay


def test_weight_decay_is_decided_by_module_type_not_name():
    from foresight.train import _param_groups

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedder_proj = nn.Linear(4, 4)  # "embed" in the name, but a linear map: decayed
            self.pos = nn.Parameter(torch.zeros(8, 4))  # a position table held directly: not decayed
            self.table = nn.Embedding(10, 4)
            self.norm = nn.GroupNorm(2, 4)
            self.conv = nn.Conv2d(4, 4, 3)

    net = Net()
    groups = _param_groups(net, list(net.parameters()), 0.1)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(net.embedder_proj.weight), id(net.conv.weight)}


# ---------------------------------------------------------------------------------------------- config files


@dataclass
class _Run:
    name: str = "run"
    train: TrainConfig = field(default_factory=TrainConfig)


def test_yaml_config_errors_name_the_file(tmp_path):
    for text, what in (("train:\n  batch_size: abc\n", "batch_size: expected an int"),
                       ("train:\n  nope: 1\n", "unknown config key"),
                       ("preset: huge\n", "no preset 'huge'")):
        f = tmp_path / "bad.yaml"
        f.write_text(text)
        with pytest.raises(ConfigError, match=rf"{f.name}.*{what}"):
            build_config(_Run, ["--config", str(f)])


def test_config_json_errors_name_the_file(tmp_path, tiny_conv):
    d = tiny_conv.save_pretrained(tmp_path / "m")
    meta = json.loads((d / "config.json").read_text())
    good = json.dumps(meta)
    for change, what in ((lambda m: m["config"].update(image_size="abc"), "image_size: expected an int"),
                         (lambda m: m["config"].update(nope=1), "unknown config key"),
                         (lambda m: m.update(type="nope"), "unknown world-model type 'nope'")):
        bad = json.loads(good)
        change(bad)
        (d / "config.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=rf"{re.escape(str(d / 'config.json'))}.*{what}"):
            foresight.load(d)


# ---------------------------------------------------------------------------------------------- weights checksum


def test_flipped_byte_in_tensor_data_is_refused_naming_the_file(tmp_path, tiny_conv):
    d = tiny_conv.save_pretrained(tmp_path / "m")
    weights = d / "model.safetensors"
    data = bytearray(weights.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    i = 8 + header_len + (len(data) - 8 - header_len) // 2  # the middle of the tensor data, not the header
    data[i] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"corrupt weights file {re.escape(str(weights))}.*checksum"):
        foresight.load(d)


def test_weights_without_a_checksum_still_load(tmp_path, tiny_conv):
    from safetensors.torch import save_model

    d = tiny_conv.save_pretrained(tmp_path / "m")
    save_model(tiny_conv, str(d / "model.safetensors"))  # as files were written before checksums
    loaded = foresight.load(d)
    for a, b in zip(tiny_conv.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_tied_weights_round_trip_with_checksum(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 3)
            self.head = nn.Linear(3, 5, bias=False)
            self.head.weight = self.emb.weight

    torch.manual_seed(0)
    a, b = Tied(), Tied()
    foresight.checkpoint.save_weights(a, tmp_path / "w.safetensors")
    foresight.checkpoint.load_weights(b, tmp_path / "w.safetensors")
    assert torch.equal(a.emb.weight, b.emb.weight) and b.head.weight is b.emb.weight


# ---------------------------------------------------------------------------------------------- training state


class _RunsCode:
    """Unpickling this creates a directory: stands in for any code a handed-over state.pt could run."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_training_state_that_would_run_code_is_refused(tmp_path):
    torch.manual_seed(0)
    data = SyntheticClips(16, image_size=16)
    Trainer(ConvPredictor(preset(ConvPredictorConfig, "tiny")), data, config=_train_config(steps=2),
            run_dir=tmp_path / "r").fit()
    state_path = tmp_path / "r" / "checkpoints" / "last" / "training_state" / "state.pt"
    state = torch.load(state_path, weights_only=False)
    marker = tmp_path / "code_ran"
    state["note"] = _RunsCode(str(marker))
    torch.save(state, state_path)
    with pytest.raises(CheckpointError, match=r"training_state/state\.pt.*can run code.*os\.makedirs"):
        Trainer(ConvPredictor(preset(ConvPredictorConfig, "tiny")), data, config=_train_config(steps=4),
                run_dir=tmp_path / "r")
    assert not marker.exists()


def test_saved_training_state_loads_with_weights_only(tmp_path):
    data = SyntheticClips(16, image_size=16)
    Trainer(ConvPredictor(preset(ConvPredictorConfig, "tiny")), data, config=_train_config(steps=2),
            run_dir=tmp_path / "r").fit()
    state_path = tmp_path / "r" / "checkpoints" / "last" / "training_state" / "state.pt"
    state = torch.load(state_path, weights_only=True)  # no pickled numpy arrays or other objects
    assert state["step"] == 2
    # The RNG states round-trip exactly (resume exactness rests on this).
    from foresight.train import _rng_state, _set_rng_state

    np.random.seed(3)
    saved = _rng_state()
    expected = (np.random.rand(3), torch.rand(3), __import__("random").random())
    _set_rng_state(saved)
    got = (np.random.rand(3), torch.rand(3), __import__("random").random())
    assert np.array_equal(expected[0], got[0]) and torch.equal(expected[1], got[1]) and expected[2] == got[2]
    with pytest.raises(pickle.UnpicklingError):  # the old format (a pickled numpy state) is not loadable safely
        torch.save({"rng": {"numpy": np.random.get_state()}}, tmp_path / "old.pt")
        torch.load(tmp_path / "old.pt", weights_only=True)


# ---------------------------------------------------------------------------------------------- predict input


def test_predict_rejects_zero_steps_and_empty_batch_clearly(tiny_conv):
    with pytest.raises(ValueError, match=r"actions: expected at least 1 future step .*\[2, 0, 4\]"):
        tiny_conv.predict(torch.rand(2, 1, 3, 16, 16), torch.zeros(2, 0, 4))
    with pytest.raises(ValueError, match=r"context_frames: expected a batch of at least 1 clip.*\[0, 1, 3, 16, 16\]"):
        tiny_conv.predict(torch.rand(0, 1, 3, 16, 16), torch.zeros(0, 3, 4))
    from foresight.models.baselines import CopyLastConfig, CopyLastFrame

    action_free = CopyLastFrame(CopyLastConfig(action_dim=0))
    context = torch.rand(1, action_free.context_frames, 3, action_free.image_size, action_free.image_size)
    assert action_free.predict(context, None, horizon=np.int64(2)).shape[2] == 2
    with pytest.raises(ValueError, match="horizon: expected a positive int, got 0"):
        action_free.predict(context, None, horizon=0)


def test_predict_accepts_integer_like_num_samples_and_refuses_bools_and_floats(tiny_conv):
    context, actions = torch.rand(2, 1, 3, 16, 16), torch.rand(2, 3, 4)
    out = tiny_conv.predict(context, actions, np.int64(2), seed=0)
    assert out.shape == (2, 2, 3, 3, 16, 16)
    assert torch.equal(out, tiny_conv.predict(context, actions, 2, seed=0))
    for bad in (True, 2.0, np.float32(2), "2"):
        with pytest.raises(ValueError, match="num_samples: expected a positive int"):
            tiny_conv.predict(context, actions, bad)


# ---------------------------------------------------------------------------------------------- train.steps


def test_train_steps_must_be_positive():
    with pytest.raises(ConfigError, match=r"train\.steps: must be positive .*got 0"):
        build_config(_Run, ["train.steps=0"])
    with pytest.raises(ConfigError, match=r"steps: must be positive .*got -5"):
        TrainConfig(steps=-5)
    cfg = TrainConfig(steps=3)
    cfg.steps = 0  # changed after construction: the Trainer checks again
    with pytest.raises(ConfigError, match=r"steps: must be positive"):
        Trainer(ConvPredictor(preset(ConvPredictorConfig, "tiny")), SyntheticClips(8, image_size=16), config=cfg,
                run_dir="unused")


# ---------------------------------------------------------------------------------------------- RoboNet split


def test_split_naming_an_unreadable_file_says_unreadable_and_why(tmp_path):
    from foresight.data import robonet as rn

    paths = rn.write_synthetic_trajectories(tmp_path, 3, steps=14, frame_size=(24, 32))
    bad = paths[0]
    bad.write_bytes(bad.read_bytes()[:200])  # truncated download
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = rn.RoboNetIndex.build(tmp_path, progress=False)
    assert bad.name in index.skipped
    reason = re.escape(index.skipped[bad.name][:30])
    with pytest.raises(FileNotFoundError, match=rf"unreadable.*{re.escape(bad.name)}: {reason}"):
        index.select([bad.name, paths[1].name])
    with pytest.raises(FileNotFoundError, match=r"not in the index .*'nowhere.hdf5'") as e:
        index.select(["nowhere.hdf5", paths[1].name])
    assert "unreadable" not in str(e.value)


# ---------------------------------------------------------------------------------------------- atomic writes


def test_atomic_path_replaces_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    from foresight.checkpoint import atomic_path

    target = tmp_path / "sub" / "results.csv"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".csv" and tmp != target  # format sniffers see .csv
        tmp.write_text("first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(target) as tmp:
            tmp.write_text("half a file")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.csv"]  # no temp file left behind
