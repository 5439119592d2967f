import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import foresight
from foresight.config import preset
from foresight.models.baselines import ConvPredictor, ConvPredictorConfig
from foresight.testing import SyntheticClips
from foresight.train import TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]


class NoisyConv(ConvPredictor):
    """ConvPredictor whose loss draws from the global RNG, as VAEs and dropout do."""

    def loss(self, batch):
        batch = dict(batch)
        batch["frames"] = (batch["frames"] + 0.01 * torch.randn_like(batch["frames"])).clamp(0, 1)
        return super().loss(batch)


def make_model(seed=0, cls=ConvPredictor):
    torch.manual_seed(seed)
    return cls(preset(ConvPredictorConfig, "tiny"))


def train_config(**kw):
    base = dict(steps=8, batch_size=4, lr=3e-3, warmup_steps=2, log_every=1, eval_every=0, save_every=0,
                progress=False, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def read_losses(run_dir):
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def test_loss_falls_and_checkpoint_layout(tmp_path):
    data = SyntheticClips(32, image_size=16, future_frames=3)
    trainer = Trainer(make_model(), data, config=train_config(steps=30, save_every=10, keep_checkpoints=2),
                      run_dir=tmp_path / "run", eval_dataset=SyntheticClips(8, seed=1, image_size=16))
    trainer.fit()
    losses = read_losses(tmp_path / "run")
    assert losses[30] < 0.5 * losses[1]
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if not p.name.startswith(".")) == ["000000020", "000000030", "last"]
    assert (ckpts / "last").resolve().name == "000000030"
    for name in ("config.json", "model.safetensors", "training_state/state.pt", "training_state/trainer.json"):
        assert (ckpts / "last" / name).is_file(), name
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert list((tmp_path / "run" / "videos").glob("*.png")) and list((tmp_path / "run" / "videos").glob("*.gif"))
    loaded = foresight.load(tmp_path / "run")  # a run dir resolves to checkpoints/last
    for a, b in zip(loaded.state_dict().values(), trainer.model.state_dict().values()):
        assert torch.equal(a, b)


class Killed(Exception):
    pass


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, grad_accum):
    data = SyntheticClips(20, image_size=16, future_frames=3, augment_shift=2)  # augmentation draws randomness
    cfg = train_config(steps=10, save_every=3, grad_accum=grad_accum)

    Trainer(make_model(cls=NoisyConv), data, config=cfg, run_dir=tmp_path / "full").fit()

    interrupted = Trainer(make_model(cls=NoisyConv), data, config=cfg, run_dir=tmp_path / "part")
    original_step = interrupted._train_step

    def dying_step(it):
        if interrupted.step == 7:  # after the step-6 checkpoint, before the step-9 one
            raise Killed()
        return original_step(it)

    interrupted._train_step = dying_step
    with pytest.raises(Killed):
        interrupted.fit()
    # A new process: fresh model with other initial weights; everything must come from the checkpoint.
    resumed = Trainer(make_model(seed=123, cls=NoisyConv), data, config=cfg, run_dir=tmp_path / "part")
    assert resumed.step == 6
    resumed.fit()

    full, part = read_losses(tmp_path / "full"), read_losses(tmp_path / "part")
    assert sorted(full) == sorted(part) == list(range(1, 11))
    for step in full:
        assert part[step] == pytest.approx(full[step], rel=1e-6, abs=1e-7), step
    a = foresight.load(tmp_path / "full")
    b = foresight.load(tmp_path / "part")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7, msg=name)


def test_grad_accumulation_matches_big_batch(tmp_path):
    data = SyntheticClips(32, image_size=16)
    small = Trainer(make_model(), data, config=train_config(batch_size=2, grad_accum=2, steps=4), run_dir=tmp_path / "a")
    big = Trainer(make_model(), data, config=train_config(batch_size=4, grad_accum=1, steps=4), run_dir=tmp_path / "b")
    # Same global batches: batch_size * grad_accum clips per step, in the same order.
    small.fit(), big.fit()
    for x, y in zip(small.model.parameters(), big.model.parameters()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_ema_checkpoint_holds_ema_weights(tmp_path):
    data = SyntheticClips(16, image_size=16)
    trainer = Trainer(make_model(), data, config=train_config(steps=5, ema_decay=0.9), run_dir=tmp_path / "r")
    trainer.fit()
    saved = foresight.load(tmp_path / "r")
    raw = dict(trainer.model.named_parameters())
    differs = False
    for name, p in saved.named_parameters():
        torch.testing.assert_close(p, trainer.ema[name])
        differs |= not torch.allclose(p, raw[name])
    assert differs  # EMA weights are not the raw weights


def test_resume_refuses_other_stage_and_corrupt_state(tmp_path):
    data = SyntheticClips(16, image_size=16)
    Trainer(make_model(), data, config=train_config(steps=2), run_dir=tmp_path / "r").fit()
    state = tmp_path / "r" / "checkpoints" / "last" / "training_state" / "state.pt"
    state.write_bytes(state.read_bytes()[:50])
    with pytest.raises(foresight.CheckpointError, match="corrupt training state .*state.pt"):
        Trainer(make_model(), data, config=train_config(steps=4), run_dir=tmp_path / "r")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from foresight.config import preset
    from foresight.models.baselines import ConvPredictor, ConvPredictorConfig
    from foresight.testing import SyntheticClips
    from foresight.train import TrainConfig, Trainer
    torch.set_num_threads(1)
    batch_size, run_dir = int(sys.argv[1]), sys.argv[2]
    torch.manual_seed(0)
    model = ConvPredictor(preset(ConvPredictorConfig, "tiny"))
    cfg = TrainConfig(steps=4, batch_size=batch_size, lr=3e-3, warmup_steps=1, log_every=1, eval_every=0,
                      save_every=0, progress=False, seed=3)
    trainer = Trainer(model, SyntheticClips(24, image_size=16), config=cfg, run_dir=run_dir)
    trainer.fit()
    if trainer.rank == 0:
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, run_dir + "/final.pt")
    if trainer.distributed:
        torch.distributed.destroy_process_group()
    """
)


def test_ddp_two_gloo_processes_match_one_process_with_combined_batch(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, str(script), "4", str(tmp_path / "single")], check=True, env=env, timeout=300)
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={_free_port()}", str(script), "2", str(tmp_path / "ddp")],
        check=True, env=env, timeout=300)
    single = torch.load(tmp_path / "single" / "final.pt")
    ddp = torch.load(tmp_path / "ddp" / "final.pt")
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.equal(single["encoder.0.weight"], ConvPredictor(preset(ConvPredictorConfig, "tiny")).state_dict()["encoder.0.weight"])


@pytest.mark.gpu
def test_cuda_bf16_training_and_checkpoint(tmp_path):
    data = SyntheticClips(32, image_size=16)
    trainer = Trainer(make_model(), data, config=train_config(steps=10, device="cuda"), run_dir=tmp_path / "r")
    assert trainer.device.type == "cuda" and trainer.autocast_dtype == torch.bfloat16
    trainer.fit()
    losses = read_losses(tmp_path / "r")
    assert losses[10] < losses[1]
    assert foresight.load(tmp_path / "r").device.type == "cpu"  # checkpoints load anywhere


def test_sample_videos_come_from_clips_when_the_stage_trains_on_a_cache(tmp_path):
    from foresight.models.harp import Harp, HarpConfig

    torch.manual_seed(0)
    model = Harp(preset(HarpConfig, "tiny"))
    data = SyntheticClips(16, image_size=16, future_frames=3)
    cfg = train_config(steps=2, warmup_steps=1)
    Trainer(model, data, config=cfg, run_dir=tmp_path / "tok", stage="tokenizer").fit()
    trainer = Trainer(model, data, config=cfg, run_dir=tmp_path / "tr", stage="transformer")
    assert "frames" not in trainer.train_dataset[0]  # the transformer trains on cached codes
    trainer.fit()
    assert list((tmp_path / "tr" / "videos").glob("*.png"))


def test_max_minutes_budget_stops_training_ends_the_cosine_and_is_kept_across_resumes(tmp_path, monkeypatch):
    import time as time_module

    clock = {"t": 0.0}

    def fake_perf_counter():  # every reading advances 0.5 s: each training step "takes" 0.5 s
        clock["t"] += 0.5
        return clock["t"]

    monkeypatch.setattr(time_module, "perf_counter", fake_perf_counter)
    data = SyntheticClips(16, image_size=16, future_frames=3)
    cfg = train_config(steps=1000, max_minutes=0.05, warmup_steps=0, min_lr_ratio=0.1)  # 3 s = 6 steps of 0.5 s
    trainer = Trainer(make_model(), data, config=cfg, run_dir=tmp_path / "run")
    trainer.fit()
    assert trainer.step == 6 and trainer.finished and trainer.train_seconds == pytest.approx(3.0)
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if r["split"] == "train"]
    assert lrs[-1] == pytest.approx(cfg.lr * cfg.min_lr_ratio)  # the cosine followed the budget, not the 1000 steps
    assert lrs[0] < cfg.lr and lrs == sorted(lrs, reverse=True)
    info = json.loads((tmp_path / "run" / "checkpoints" / "last" / "training_state" / "trainer.json").read_text())
    assert info["step"] == 6 and info["finished"] is True and info["train_seconds"] == pytest.approx(3.0)

    again = Trainer(make_model(), data, config=cfg, run_dir=tmp_path / "run")  # resumes with the budget spent
    assert again.step == 6 and again.finished
    again.fit()
    assert again.step == 6 and len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == len(rows)

    sys.path.insert(0, str(REPO))
    from experiments.train_world_model import previous_stage_result

    stage_dir = tmp_path / "stages"
    (stage_dir).mkdir()
    os.symlink(tmp_path / "run", stage_dir / "module1")
    assert previous_stage_result(stage_dir, "module1") is not None  # a budget-finished stage counts as finished


def test_max_minutes_must_be_a_non_negative_number():
    from foresight.config import ConfigError

    for bad in (-1.0, True, "soon"):
        with pytest.raises(ConfigError, match="max_minutes"):
            TrainConfig(max_minutes=bad)
