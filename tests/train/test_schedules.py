"""Optimizer groups and learning-rate schedules."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from helpers.recipes import tiny_recipe
from mamba_asr.config import TrainConfig
from mamba_asr.models.factory import build_model
from mamba_asr.train.schedules import build_optimizer, build_scheduler, decay_split, lr_factor


def test_noam_warms_up_linearly_then_decays_as_inverse_sqrt():
    assert lr_factor(1, "noam", 4) == 0.25
    assert lr_factor(4, "noam", 4) == 1.0
    assert lr_factor(16, "noam", 4) == pytest.approx(0.5)
    assert lr_factor(10**6, "constant", 4) == 1.0
    with pytest.raises(ValueError, match="schedule must be"):
        lr_factor(1, "cosine", 4)


@pytest.mark.parametrize("schedule", ["noam", "constant"])
def test_scheduler_gives_each_optimizer_step_its_lr_and_survives_a_reload(schedule):
    cfg = TrainConfig(lr=0.01, warmup_steps=3, schedule=schedule)
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg)
    used = []
    for _ in range(6):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.01 * lr_factor(s, schedule, 3) for s in range(1, 7)]
    assert used == pytest.approx(expected)
    buffer = io.BytesIO()
    torch.save(sched.state_dict(), buffer)
    buffer.seek(0)
    opt2 = build_optimizer(model, cfg)
    sched2 = build_scheduler(opt2, cfg)
    sched2.load_state_dict(torch.load(buffer, weights_only=True))
    assert sched2.get_last_lr() == sched.get_last_lr()
    sched.step()
    sched2.step()
    assert sched2.get_last_lr() == pytest.approx([0.01 * lr_factor(8, schedule, 3)] * 2)
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_no_decay_for_a_log_d_biases_and_norms_whatever_their_names():
    cfg = tiny_recipe("seq2seq", "model.vocab_size=8", "model.decoder_module=mamba").model
    model = build_model(cfg, device="meta")
    decay, no_decay = decay_split(model)
    assert set(decay) | set(no_decay) == {n for n, _ in model.named_parameters()}
    assert not set(decay) & set(no_decay)
    for name in no_decay:
        last = name.rsplit(".", 1)[-1]
        assert last in ("A_log", "D", "bias") or "norm" in name or ".ffn1.0." in name \
            or ".ffn2.0." in name, name  # fmt: skip
    assert "encoder.layers.0.ffn1.0.weight" in no_decay  # a LayerNorm inside a Sequential
    assert "encoder.layers.0.mamba.fwd.A_log" in no_decay
    assert "encoder.layers.0.mamba.fwd.D" in no_decay
    assert "encoder.layers.0.mamba.in_proj.weight" in decay
    assert "decoder.embed.embedding.weight" in decay  # an embedding, not a norm
    assert "ctc_lin.weight" in decay and "ctc_lin.bias" in no_decay

    opt = build_optimizer(model, TrainConfig(weight_decay=0.05, betas=(0.8, 0.9), eps=1e-7))
    groups = {g["weight_decay"]: len(g["params"]) for g in opt.param_groups}
    assert groups == {0.05: len(decay), 0.0: len(no_decay)}
    assert opt.param_groups[0]["betas"] == (0.8, 0.9) and opt.param_groups[0]["eps"] == 1e-7
