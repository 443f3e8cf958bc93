"""WeightAverage: the EMA update, its decay ramp, swapping the average in and out, resuming."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.train.optim import WeightAverage


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def perturbed(model: nn.Module, step: int) -> None:
    """A stand-in optimizer step: new weights and BatchNorm statistics."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.full_like(param, 0.1 * step))
    model.train()
    model(torch.randn(8, 3))  # moves running_mean/var and num_batches_tracked


def test_first_update_copies_then_means_then_decays():
    model = small_model()
    average = WeightAverage(model, decay=0.9)
    expected = {name: value.clone() for name, value in model.state_dict().items()}
    for step in range(1, 30):
        decay = min(0.9, (step - 1) / step)  # n / (n + 1) after n = step - 1 updates: the mean of all so far
        assert average.current_decay() == pytest.approx(decay)
        perturbed(model, step)
        average.update(model)
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                expected[name] = decay * expected[name] + (1 - decay) * value
            else:
                expected[name] = value.clone()
    assert average.updates == 29 and average.current_decay() == 0.9
    for name, value in expected.items():
        torch.testing.assert_close(average.average[name], value, rtol=1e-5, atol=1e-6)
    assert average.average["1.num_batches_tracked"] == 29  # integer buffers follow the model
    assert not torch.equal(average.average["0.weight"], model.state_dict()["0.weight"])


def test_the_start_is_forgotten_and_early_updates_are_a_plain_mean():
    """The first update copies the weights: under DDP the average is built before rank 0's
    weights are broadcast, so another rank's own initial weights must not linger in it."""
    model = small_model()
    average = WeightAverage(model, decay=0.9)
    average.average["0.weight"].fill_(1.0e6)  # a start that has nothing to do with training
    snapshots = []
    for step in range(1, 6):
        perturbed(model, step)
        average.update(model)
        snapshots.append(model.state_dict()["0.weight"].clone())
    torch.testing.assert_close(average.average["0.weight"], torch.stack(snapshots).mean(0))


def averaged(decay: float, steps: int) -> tuple[nn.Module, WeightAverage]:
    """A model after ``steps`` stand-in optimizer steps, and the average of them."""
    model = small_model()
    average = WeightAverage(model, decay)
    for step in range(1, steps + 1):
        perturbed(model, step)
        average.update(model)
    return model, average


def test_applied_swaps_the_average_in_and_the_own_weights_back():
    model, average = averaged(0.5, steps=3)
    own = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="inside"):
        with average.applied(model):
            for name, value in model.state_dict().items():
                assert torch.equal(value, average.average[name])
            raise RuntimeError("inside")
    for name, value in model.state_dict().items():
        assert torch.equal(value, own[name])


def test_load_continues_from_a_saved_average():
    model, first = averaged(0.8, steps=5)
    second = WeightAverage(model, decay=0.8)  # starts from the model's current weights
    second.load({name: value.clone() for name, value in first.average.items()}, first.updates)
    perturbed(model, 6)
    first.update(model)
    second.update(model)
    assert second.updates == first.updates == 6
    for name, value in first.average.items():
        assert torch.equal(second.average[name], value)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_decay_must_be_in_the_open_unit_interval(decay):
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(small_model(), decay)
