"""One guided step of Attend-and-Excite: gradient steps on the latent, with
iterative refinement, for a whole batch at once (each row on its own).

The decisions stay on the latent's device: a refinement iteration reads the host
once (does any row go on?), and the step's log stays there until the caller reads it
(the sampler, once its call ends: a step without refinement makes the host wait for nothing).
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch


@dataclass
class Evaluation:
    loss: torch.Tensor                       # (B,), detached
    peaks: torch.Tensor                      # (B, S), detached
    gradient: Callable[[], torch.Tensor]     # d loss.sum() / d x, made when asked for
    indicator: Optional[torch.Tensor] = None   # (B,), what thresholds are compared with; None: the loss
    terms: dict = field(default_factory=dict)  # the loss's terms, name -> (B,), detached

    @classmethod
    def of(cls, leaf: torch.Tensor, loss: torch.Tensor, peaks: torch.Tensor, indicator=None,
           terms: Optional[dict] = None) -> "Evaluation":
        """From a differentiable loss of `leaf`: autograd runs only if the gradient is asked for."""
        return cls(loss.detach(), peaks.detach(), lambda: torch.autograd.grad(loss.sum(), leaf)[0],
                   None if indicator is None else indicator.detach(),
                   {name: term.detach() for name, term in (terms or {}).items()})


def peak_unmet(at: Evaluation, threshold: float) -> torch.Tensor:
    """Attend-and-Excite's refinement test, as the reference: the loss above 1 - threshold."""
    return at.loss > max(0.0, 1.0 - threshold)


# evaluate(x) -> the loss and peaks at x, and their gradient with respect to x.
Evaluate = Callable[[torch.Tensor], Evaluation]


@dataclass
class StepLog:
    step: int
    losses: list = field(default_factory=list)        # one (B,) list per evaluation
    peaks: list = field(default_factory=list)         # one (B, S) list per evaluation
    refinement_iterations: list = field(default_factory=list)   # (B,)
    skipped_updates: int = 0   # row updates left out because their gradient was not finite
    terms: dict = field(default_factory=dict)         # the loss's terms: name -> one (B,) list per evaluation

    @classmethod
    def read(cls, step: int, *, losses: list, peaks: list, iterations: torch.Tensor, skipped: torch.Tensor,
             terms: list = ()):
        """The log from the step's device tensors, in one transfer to the host. terms: one
        dict of (B,) tensors per evaluation."""
        losses, peaks = torch.stack(losses).float(), torch.stack(peaks).float()
        evaluations, batch, subjects = peaks.shape
        names = list(terms[0]) if terms else []
        named = [torch.stack([t[name] for t in terms]).float().flatten() for name in names]
        flat = torch.cat([losses.flatten(), peaks.flatten(), *named, iterations.float(),
                          skipped.float().view(1)]).tolist()
        rows = [flat[i:i + subjects] for i in range(losses.numel(), losses.numel() + peaks.numel(), subjects)]
        start = losses.numel() + peaks.numel()
        read_terms = {}
        for name in names:
            read_terms[name] = [flat[i:i + batch] for i in range(start, start + losses.numel(), batch)]
            start += losses.numel()
        return cls(step, [flat[i:i + batch] for i in range(0, losses.numel(), batch)],
                   [rows[i:i + batch] for i in range(0, len(rows), batch)],
                   [int(i) for i in flat[-1 - batch:-1]], int(flat[-1]), read_terms)


@dataclass
class UnreadLog:
    """A step's log on the latent's device; read() brings it to the host in one transfer."""
    step: int
    losses: list
    peaks: list
    iterations: torch.Tensor
    skipped: torch.Tensor
    terms: list

    def read(self) -> StepLog:
        return StepLog.read(self.step, losses=self.losses, peaks=self.peaks, iterations=self.iterations,
                            skipped=self.skipped, terms=self.terms)


def _descend(x: torch.Tensor, at: Evaluation, step_size: float, skipped: torch.Tensor, rows=None) -> torch.Tensor:
    """One gradient step on the rows that are moving (all by default). A row whose loss or
    gradient is not finite (an fp16 overflow) keeps its latent, and `skipped` counts it."""
    grad = at.gradient()
    finite = torch.isfinite(grad).flatten(1).all(dim=1) & torch.isfinite(at.loss)
    moving = finite if rows is None else rows & finite
    skipped += (~finite if rows is None else rows & ~finite).sum()
    grad = torch.where(moving.view(-1, *([1] * (grad.dim() - 1))), grad, 0.0)
    return (x - step_size * grad).detach()


def excite(x: torch.Tensor, evaluate: Evaluate, *, step: int, step_size: float, alter: bool,
           threshold: Optional[float], max_refinement: int,
           on_iteration: Callable[[int], None] = lambda i: None,
           unmet: Callable[[Evaluation, float], torch.Tensor] = peak_unmet) -> tuple[torch.Tensor, UnreadLog]:
    """Returns the moved latent and the log of every evaluation at this step.

    As the reference: refinement runs while a row is short of the threshold (unmet; for
    Attend-and-Excite its loss, read before that iteration's update, above 1 - threshold),
    at most max_refinement times; then the step's own update follows from a fresh evaluation.
    """
    at = evaluate(x)
    losses, peaks, terms = [at.loss], [at.peaks], [at.terms]
    iterations = torch.zeros(at.loss.shape, dtype=torch.long, device=at.loss.device)
    skipped = torch.zeros((), dtype=torch.long, device=at.loss.device)
    if threshold is not None:
        active = unmet(at, threshold)
        iteration = 0
        while bool(active.any()):    # the iteration's one read on the host
            iteration += 1
            on_iteration(iteration)
            iterations += active
            x = _descend(x, at, step_size, skipped, active)
            still = active & unmet(at, threshold) & (iterations < max_refinement)
            at = evaluate(x)
            losses.append(at.loss)
            peaks.append(at.peaks)
            terms.append(at.terms)
            active = still
    if alter:
        x = _descend(x, at, step_size, skipped)
    return x.detach(), UnreadLog(step, losses, peaks, iterations, skipped, terms if at.terms else [])
