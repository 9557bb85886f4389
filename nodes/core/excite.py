"""One guided step of Attend-and-Excite: gradient steps on the latent, with
iterative refinement, for a whole batch at once (each row on its own)."""
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

# evaluate(x) -> (leaf, loss, peaks): leaf is x as a tensor that requires grad,
# loss (B,) and peaks (B, S) are computed from it with the graph kept.
Evaluate = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class StepLog:
    step: int
    losses: list = field(default_factory=list)        # one (B,) list per evaluation
    peaks: list = field(default_factory=list)         # one (B, S) list per evaluation
    refinement_iterations: list = field(default_factory=list)   # (B,)
    skipped_updates: int = 0   # row updates left out because their gradient was not finite

    def add(self, loss: torch.Tensor, peaks: torch.Tensor):
        self.losses.append(loss.detach().float().cpu().tolist())
        self.peaks.append(peaks.detach().float().cpu().tolist())


def _descend(leaf, loss, step_size, log: StepLog, rows=None):
    """One gradient step on the rows that are moving (all by default). A row whose loss or
    gradient is not finite (an fp16 overflow) keeps its latent, and the log counts it."""
    (grad,) = torch.autograd.grad(loss.sum(), leaf)
    moving = torch.ones(grad.shape[0], dtype=torch.bool) if rows is None else rows.clone()
    finite = (torch.isfinite(grad).flatten(1).all(dim=1) & torch.isfinite(loss.detach())).cpu()
    log.skipped_updates += int((moving & ~finite).sum())
    moving &= finite
    grad = torch.where(moving.to(grad.device).view(-1, *([1] * (grad.dim() - 1))), grad, torch.zeros_like(grad))
    return (leaf - step_size * grad).detach()


def excite(x: torch.Tensor, evaluate: Evaluate, step: int, step_size: float, alter: bool,
           threshold: Optional[float], max_refinement: int,
           on_iteration: Callable[[int], None] = lambda i: None) -> tuple[torch.Tensor, StepLog]:
    """Returns the moved latent and the log of every evaluation at this step.

    As the reference: refinement runs while a row's loss, read before that
    iteration's update, is above 1 - threshold, at most max_refinement times;
    then the step's own update follows from a fresh evaluation.
    """
    log = StepLog(step)
    leaf, loss, peaks = evaluate(x)
    log.add(loss, peaks)
    iterations = torch.zeros(loss.shape[0], dtype=torch.long)
    if threshold is not None:
        target = max(0.0, 1.0 - threshold)
        active = (loss.detach() > target).cpu()
        while active.any():
            on_iteration(int(iterations.max()) + 1)
            iterations += active.long()
            x = _descend(leaf, loss, step_size, log, active)
            still = active & (loss.detach() > target).cpu() & (iterations < max_refinement)
            leaf, loss, peaks = evaluate(x)
            log.add(loss, peaks)
            active = still
    log.refinement_iterations = iterations.tolist()
    if alter:
        x = _descend(leaf, loss, step_size, log)
    return x.detach(), log
