"""Synaptic Intelligence in the training loops people write: mixed-precision loss scaling (with
skipped steps), gradient clipping, accumulation over micro-batches, several param groups, extra
backward passes and any optimizer — each against a reference SI that computes the task gradient
separately with ``torch.autograd.grad``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from oracles import TOLERANCES
from torch import Tensor, nn

from fisherkit.regularizers import SynapticIntelligence

STEPS = 6
MICRO_BATCHES = 3


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def _batch(task: int, step: int, micro: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1000 * task + 10 * step + micro)
    x = torch.randn(8, 4, generator=generator)
    return x, torch.randint(0, 3, (8,), generator=generator)


class Loop:
    """One training loop with the features under test switched on or off."""

    def __init__(
        self,
        make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] = lambda m: torch.optim.SGD(m.parameters(), 0.1),
        scale: float | None = None,
        clip: float | None = None,
        micro_batches: int = 1,
        penalty_weight: float = 1.0,
        logging_backward: bool = False,
        poisoned_step: int | None = None,
    ) -> None:
        self.make_optimizer, self.scale, self.clip = make_optimizer, scale, clip
        self.micro_batches, self.penalty_weight = micro_batches, penalty_weight
        self.logging_backward, self.poisoned_step = logging_backward, poisoned_step

    def run(self) -> tuple[SynapticIntelligence, dict[str, Tensor], dict[str, Tensor], int]:
        """Two tasks; returns SI, the reference Ω after the first, the reference ω of the second
        and the number of skipped steps."""
        model = _model()
        si = SynapticIntelligence(model, strength=0.5, damping=0.1)
        params = dict(model.named_parameters())
        importance, skipped = {}, 0
        for task in range(2):
            start = {n: p.detach().clone() for n, p in params.items()}
            optimizer = self.make_optimizer(model)
            scaler = None if self.scale is None else torch.amp.GradScaler("cpu", init_scale=self.scale)
            si.begin_task(optimizer, scaler)
            omega = {n: torch.zeros_like(p) for n, p in params.items()}
            for step in range(STEPS):
                optimizer.zero_grad()
                task_grad = {n: torch.zeros_like(p) for n, p in params.items()}
                for micro in range(self.micro_batches):
                    x, y = _batch(task, step, micro)
                    task_loss = nn.functional.cross_entropy(model(x), y) / self.micro_batches
                    if step == self.poisoned_step:
                        task_loss = task_loss * float("inf")
                    grads = torch.autograd.grad(task_loss, list(params.values()), retain_graph=True)
                    for name, g in zip(params, grads):
                        task_grad[name] += g
                    loss = task_loss + self.penalty_weight * si.penalty() / self.micro_batches
                    (loss if scaler is None else scaler.scale(loss)).backward()
                if self.logging_backward and task == 1:  # the penalty exists from the second task on
                    torch.autograd.grad(si.penalty(), list(params.values()), allow_unused=True)
                    si.penalty().backward()  # its gradient is in .grad now, but it is not the task's
                before = {n: p.detach().clone() for n, p in params.items()}
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if self.clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), self.clip)
                if scaler is None:
                    optimizer.step()
                else:
                    scaler.step(optimizer)
                    scaler.update()
                finite = all(bool(torch.isfinite(g).all()) for g in task_grad.values())
                skipped += not finite
                if finite:
                    for name, p in params.items():
                        omega[name] += -task_grad[name] * (p.detach() - before[name])
            if task == 0:
                si.end_task()
                importance = {n: omega[n] / ((p.detach() - start[n]).square() + 0.1) for n, p in params.items()}
        return si, importance, omega, skipped


LOOPS = {
    "plain": Loop(),
    "grad-scaler": Loop(scale=1024.0),
    "grad-scaler-with-a-skipped-step": Loop(scale=1024.0, poisoned_step=2),
    "clipping": Loop(clip=0.05),
    "grad-scaler-and-clipping": Loop(scale=2.0**16, clip=0.05),
    "accumulation": Loop(micro_batches=MICRO_BATCHES),
    "weighted-penalty": Loop(penalty_weight=0.3),
    "logging-backward": Loop(logging_backward=True),
    "param-groups-adam": Loop(
        make_optimizer=lambda m: torch.optim.Adam(
            [{"params": m[0].parameters(), "lr": 0.02}, {"params": m[2].parameters(), "lr": 0.005}]
        )
    ),
    "sgd-momentum-weight-decay": Loop(
        make_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    ),
    "rmsprop": Loop(make_optimizer=lambda m: torch.optim.RMSprop(m.parameters(), lr=0.01)),
    "adamw-accumulation-scaler-clipping": Loop(
        make_optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=0.01),
        scale=512.0,
        clip=0.1,
        micro_batches=MICRO_BATCHES,
        poisoned_step=4,
    ),
}


@pytest.mark.parametrize("loop", list(LOOPS), ids=list(LOOPS))
def test_si_integrates_the_gradient_of_the_task_loss_alone(loop):
    si, importance, omega, skipped = LOOPS[loop].run()
    assert skipped == 2 * int(LOOPS[loop].poisoned_step is not None)  # one in each task
    assert all(float(v.abs().max()) > 0 for v in omega.values())  # the second task moved every weight
    for name in omega:
        torch.testing.assert_close(si.importance[name], importance[name], **TOLERANCES[torch.float32])
        torch.testing.assert_close(si.omega[name], omega[name], **TOLERANCES[torch.float32])


def test_si_reads_the_loss_scale_without_a_host_synchronization(monkeypatch):
    def host_read(scaler):
        raise AssertionError("GradScaler.get_scale() copies the scale to the host")

    monkeypatch.setattr(torch.amp.GradScaler, "get_scale", host_read)
    si, importance, omega, _ = LOOPS["grad-scaler-with-a-skipped-step"].run()
    for name in omega:
        torch.testing.assert_close(si.omega[name], omega[name], **TOLERANCES[torch.float32])


def test_si_counts_only_the_steps_the_optimizer_took():
    si, _, _, skipped = LOOPS["grad-scaler-with-a-skipped-step"].run()
    assert skipped == 2
    assert si.steps == STEPS - 1


def test_si_refuses_what_is_not_an_optimizer_or_a_grad_scaler():
    model = _model()
    si = SynapticIntelligence(model, 1.0)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        si.begin_task(model)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="torch.amp.GradScaler"):
        si.begin_task(torch.optim.SGD(model.parameters(), 0.1), scaler=1024.0)  # type: ignore[arg-type]
