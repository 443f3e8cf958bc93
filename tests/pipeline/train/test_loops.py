"""The training loop on a one-weight model whose gradients are worked out by hand: gradient
accumulation averages the batches of a group, and an optimizer step that the fp16 GradScaler
skips moves neither the schedule nor the weight average."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.config import TrainConfig
from pipeline.train.loops import train_one_epoch
from pipeline.train.optim import WeightAverage

CPU = torch.device("cpu")


class Scale(nn.Module):
    """``regression = weight * x``, one weight starting at 1."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"regression": self.weight * batch["x"]}


def squared_error(outputs: dict, labels: dict) -> tuple[torch.Tensor, dict]:
    """Mean over the batch of ``(weight * x - 0)^2``: its gradient is ``2 * mean(x^2) * weight``."""
    return outputs["regression"].pow(2).mean(), {}


def batches(*xs: list[float]) -> list[dict]:
    return [{"x": torch.tensor(x), "labels": {}, "ids": [f"c{i}" for i in range(len(x))]} for x in xs]


def run_epoch(loader: list[dict], lr: float, scaler: torch.amp.GradScaler | None = None,
              average: WeightAverage | None = None, model: nn.Module | None = None, **train) -> tuple:
    model = model or Scale()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
    cfg = TrainConfig(grad_clip=0.0, log_every=1000, **train)
    train_one_epoch(model, loader, squared_error, optimizer, scheduler, scaler, CPU, cfg, epoch=0,
                    average=average)
    return model.weight.item(), scheduler


def test_accumulated_batches_step_like_one_batch_of_all_their_samples():
    # x = 1 and x = 3: gradient 2 * (1 + 9) / 2 * 1 = 10 at weight 1, so SGD at 0.01 gives 0.9,
    # whether the two samples come as one batch or as two accumulated ones.
    whole, _ = run_epoch(batches([1.0, 3.0]), lr=0.01)
    accumulated, scheduler = run_epoch(batches([1.0], [3.0]), lr=0.01, accumulate=2)
    assert whole == pytest.approx(0.9) and accumulated == pytest.approx(0.9)
    assert scheduler.last_epoch == 1  # one optimizer step for the two batches


def test_a_short_last_group_is_averaged_over_its_own_batches():
    # accumulate=2 over 3 batches: steps after batches 2 and 3. First: x = 1, 3 -> 1 - 0.01 * 10
    # = 0.9; then x = 2 alone: gradient 2 * 4 * 0.9 = 7.2 (not halved) -> 0.9 - 0.072 = 0.828.
    weight, scheduler = run_epoch(batches([1.0], [3.0], [2.0]), lr=0.01, accumulate=2)
    assert weight == pytest.approx(0.828)
    assert scheduler.last_epoch == 2


def test_a_step_the_grad_scaler_skips_moves_neither_schedule_nor_average():
    # As in fp16, the loss is finite but its scaled gradient overflows. Scale 2^127: the first
    # batch (x = 2, loss 4, gradient 8 = 2^3) scales to 2^130 > float32's max (about 2^128),
    # so the scaler skips that step and halves its scale to 2^126; the second (x = 1, gradient
    # 2, scaled 2^127) steps the weight to 1 - 0.1 * 2 = 0.8.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)
    model = Scale()
    average = WeightAverage(model, decay=0.5)
    weight, scheduler = run_epoch(batches([2.0], [1.0]), lr=0.1, scaler=scaler, average=average, model=model)
    assert scaler.get_scale() == 2.0 ** 126  # one skipped step
    assert weight == pytest.approx(0.8)
    assert scheduler.last_epoch == 1  # stepped once, for the step that was taken
    assert average.updates == 1
    assert average.average["weight"].item() == pytest.approx(0.8)  # the first update copies the weights
