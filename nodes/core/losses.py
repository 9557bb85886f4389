"""The guidance losses, each over the maps one guidance pass records: Attend-and-Excite's and
three of its successors', which keep its loop (maps, loss, gradient step on the latent) and
change the loss.

- attend_and_excite (Chefer et al., 2023): the most neglected subject's 1 - peak.
- syngen (Rassin et al., NeurIPS 2023): each modifier's map drawn to its noun's (symmetric KL),
  the noun and its modifiers pushed away from every other prompt token's map.
- divide_and_bind (Li et al., BMVC 2023): each subject's total variation raised (several
  strong regions rather than one peak), each modifier's map bound to its noun's (Jensen-Shannon).
- a_star (Agarwal et al., ICCV 2023): the subjects' maps kept apart (soft overlap) and each kept
  where the previous guided step put it (retention).

Maps as the losses read them: `maps` (B, W, h, w) are the smoothed, x100-sharpened maps of the
subjects (the first S) and then of every modifier (maps.py); `tokens` (B, C, hw) are the raw
attention of every prompt token, each a distribution over the positions (SynGen's).
"""
import functools
import itertools
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .excite import peak_unmet
from .schedule import rescale
from .settings import A_STAR, DIVIDE_AND_BIND, LOSS_THRESHOLDS



@dataclass(frozen=True)
class Words:
    """Which maps belong to which word, worked out once per sampling call."""
    subjects: int                                        # maps 0 .. S-1
    modifiers: tuple[tuple[int, ...], ...]               # per subject, its modifiers' map indices
    noun_tokens: tuple[tuple[int, ...], ...] = ()        # per subject, its pieces' token-map indices
    modifier_tokens: tuple[tuple[tuple[int, ...], ...], ...] = ()   # per subject, per modifier, its pieces'
    token_count: int = 0                                 # token maps (the prompt's tokens)

    @classmethod
    def of(cls, subjects: list[list[int]], modifiers: list[list[list[int]]], prompt_columns: list[int]) -> "Words":
        """From context columns: each subject's, each of its modifiers', and every prompt token's."""
        position = {c: i for i, c in enumerate(prompt_columns)}
        count, indices = len(subjects), []
        for own in modifiers:
            indices.append(tuple(range(count, count + len(own))))
            count += len(own)
        return cls(len(subjects), tuple(indices), tuple(tuple(position[c] for c in s) for s in subjects),
                   tuple(tuple(tuple(position[c] for c in m) for m in own) for own in modifiers), len(prompt_columns))

    @property
    def paired(self) -> bool:
        return any(self.modifiers)

    @functools.cached_property
    def outside(self) -> tuple[list[int], ...]:
        """Per subject, the token maps outside its group (the noun's and its modifiers' pieces):
        worked out once, not at every evaluation."""
        return tuple([t for t in range(self.token_count) if t not in set(noun) | {p for m in own for p in m}]
                     for noun, own in zip(self.noun_tokens, self.modifier_tokens))


@dataclass
class LossValue:
    loss: torch.Tensor                      # (B,), what the gradient step lowers
    indicator: torch.Tensor                 # (B,), what the refinement thresholds are compared with
    terms: dict = field(default_factory=dict)   # name -> (B,), for the log


def attend_excite_loss(peaks: torch.Tensor) -> torch.Tensor:
    """(B, S) subject peaks -> (B,) loss: the most neglected subject's 1 - peak."""
    return (1.0 - peaks).clamp(min=0.0).amax(dim=-1)


def symmetric_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(KL(p||q) + KL(q||p)) / 2 over the last dimension, of distributions p and q."""
    log_p, log_q = p.clamp_min(1e-30).log(), q.clamp_min(1e-30).log()
    return 0.5 * ((p * (log_p - log_q)).sum(-1) + (q * (log_q - log_p)).sum(-1))


def pairwise_symmetric_kl(tokens: torch.Tensor) -> torch.Tensor:
    """(B, C, n) distributions -> (B, C, C): every pair's symmetric KL, by one matrix product
    (KL(i||j) = sum p_i log p_i - sum p_i log p_j)."""
    log = tokens.clamp_min(1e-30).log()
    own = (tokens * log).sum(-1)                                # (B, C)
    cross = tokens @ log.transpose(-1, -2)                      # (B, C, C): sum_x p_i(x) log p_j(x)
    kl = own[..., :, None] - cross
    return 0.5 * (kl + kl.transpose(-1, -2))


def syngen_terms(tokens: torch.Tensor, words: Words) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative), each (B,). Per noun with modifiers, per modifier: the modifier-noun
    symmetric KL (the strongest over their pieces), plus the mean of the modifier's and the
    noun's negative terms; a noun with none: its negative term. A negative term is minus the
    mean, over every prompt token outside the noun's group, of the group member's KL to it."""
    distance = pairwise_symmetric_kl(tokens / tokens.sum(-1, keepdim=True))
    positive = distance.new_zeros(distance.shape[0])
    negative = torch.zeros_like(positive)
    for noun, modifiers, outside in zip(words.noun_tokens, words.modifier_tokens, words.outside):
        def apart(pieces):
            if not outside:
                return torch.zeros_like(positive)
            return -distance[:, list(pieces)][:, :, outside].amax(dim=1).mean(dim=-1)
        if not modifiers:
            negative = negative + apart(noun)
        for modifier in modifiers:
            positive = positive + distance[:, list(modifier)][:, :, list(noun)].flatten(1).amax(dim=-1)
            negative = negative + 0.5 * (apart(modifier) + apart(noun))
    return positive, negative


def total_variation(maps: torch.Tensor) -> torch.Tensor:
    """(..., h, w) -> (...): the mean absolute difference of horizontal neighbours plus that of
    vertical neighbours (the public code's vertical term compares every row with the last; this
    is the finite difference the paper writes)."""
    across = (maps[..., :, 1:] - maps[..., :, :-1]).abs().mean(dim=(-1, -2))
    down = (maps[..., 1:, :] - maps[..., :-1, :]).abs().mean(dim=(-1, -2))
    return across + down


def jensen_shannon(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """JS divergence over the last dimension, of distributions p and q."""
    middle = (0.5 * (p + q)).log()
    return 0.5 * ((p * (p.log() - middle)).sum(-1) + (q * (q.log() - middle)).sum(-1))


def binding_divergence(noun: torch.Tensor, modifier: torch.Tensor, variation: torch.Tensor) -> torch.Tensor:
    """Divide & Bind's binding term, (B, n) maps -> (B,): the modifier's map scaled to the noun's
    peak, both made distributions over the positions (softmax), cut at a share of the noun
    distribution's peak (0.3 while the noun's total variation is under 0.1, then 0.2) and
    renormalised, and their Jensen-Shannon divergence."""
    scaled = modifier / modifier.amax(-1, keepdim=True) * noun.amax(-1, keepdim=True)
    p, q = F.softmax(noun, dim=-1), F.softmax(scaled, dim=-1)
    share = torch.full_like(variation, DIVIDE_AND_BIND.cut).masked_fill(
        variation < DIVIDE_AND_BIND.sparse_variation, DIVIDE_AND_BIND.sparse_cut)
    level = share[:, None] * p.amax(-1, keepdim=True)
    p, q = F.relu(p - level) + DIVIDE_AND_BIND.floor, F.relu(q - level) + DIVIDE_AND_BIND.floor
    return jensen_shannon(p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True))


def binding_weight(step: int, steps: int, schedule_steps: int) -> float:
    """Divide & Bind's binding weight at a sampled step: 1, 5, then 10, from the steps its
    schedule names (of schedule_steps), rescaled to the steps sampled."""
    weight = 0.0
    for start, value in DIVIDE_AND_BIND.binding_weights.items():
        if step >= rescale(start, steps, schedule_steps):
            weight = value
    return weight


def divide_and_bind_terms(maps: torch.Tensor, words: Words, weight: float):
    """(loss, smallest total variation, binding), each (B,): per subject, minus its total
    variation plus `weight` times its modifiers' binding divergences; the loss is the worst
    subject's, the binding term their sum."""
    subjects = maps[:, :words.subjects]
    variation = total_variation(subjects)                                   # (B, S)
    binding = torch.stack([sum((binding_divergence(subjects[:, s].flatten(1), maps[:, m].flatten(1), variation[:, s])
                                for m in modifiers), torch.zeros_like(variation[:, s]))
                           for s, modifiers in enumerate(words.modifiers)], dim=-1)
    return (-variation + weight * binding).amax(dim=-1), variation.amin(dim=-1), binding.sum(dim=-1)


def overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A-STAR's soft intersection over union, (..., h, w) -> (...): sum min(a, b) / sum (a + b)."""
    return torch.minimum(a, b).sum(dim=(-1, -2)) / (a + b).sum(dim=(-1, -2))


def retention_masks(maps: torch.Tensor) -> torch.Tensor:
    """(B, S, h, w) maps -> their binary masks: the positions at or above a share of each map's peak."""
    return (maps >= A_STAR.mask_level * maps.amax(dim=(-1, -2), keepdim=True)).to(maps.dtype)


def a_star_terms(maps: torch.Tensor, previous_masks: torch.Tensor | None):
    """(segregation, retention), each (B,): the mean overlap of every pair of subjects' maps, and
    the mean over subjects of 1 - the overlap of its map with its mask at the previous guided
    step (0 at the first)."""
    subjects = maps.shape[1]
    pairs = list(itertools.combinations(range(subjects), 2))
    segregation = maps.new_zeros(maps.shape[0])
    if pairs:
        first, second = zip(*pairs)
        segregation = overlap(maps[:, list(first)], maps[:, list(second)]).mean(dim=-1)
    retention = torch.zeros_like(segregation)
    if previous_masks is not None:
        retention = (1.0 - overlap(maps, previous_masks)).mean(dim=-1)
    return segregation, retention


def _attend_and_excite(maps, peaks, words, tokens, binding, previous_masks) -> LossValue:
    loss = attend_excite_loss(peaks)
    return LossValue(loss, loss)


def _syngen(maps, peaks, words, tokens, binding, previous_masks) -> LossValue:
    positive, negative = syngen_terms(tokens, words)
    loss = positive + negative
    return LossValue(loss, loss, {"positive": positive, "negative": negative})


def _divide_and_bind(maps, peaks, words, tokens, binding, previous_masks) -> LossValue:
    loss, variation, binding_term = divide_and_bind_terms(maps, words, binding)
    return LossValue(loss, variation, {"variation": variation, "binding": binding_term})


def _a_star(maps, peaks, words, tokens, binding, previous_masks) -> LossValue:
    segregation, retention = a_star_terms(maps[:, :words.subjects], previous_masks)
    loss = segregation + retention
    return LossValue(loss, loss, {"segregation": segregation, "retention": retention})


def _variation_unmet(at, threshold: float) -> torch.Tensor:
    """Divide & Bind's refinement test: the smallest total variation still under the threshold."""
    return at.indicator < threshold


@dataclass(frozen=True)
class Loss:
    """What the guidance pass and the sampler need to know of a loss. Its default thresholds are
    settings.LOSS_THRESHOLDS[name] (none: it never refines, as its paper)."""
    name: str
    value: Callable[..., LossValue]     # (maps, peaks, words, tokens, binding, previous_masks) -> LossValue
    unmet: Callable = peak_unmet        # (evaluation, threshold) -> (B,) rows still short of the threshold
    needs_pairs: bool = False           # its point is a modifier and its noun: a prompt without one is refused
    reads_modifier_maps: bool = False   # the modifiers' maps are scored as the subjects' are
    reads_token_maps: bool = False      # every prompt token's raw map (B, C, hw)
    binding_schedule: bool = False      # weighs its binding term by the step (binding_weight)
    retains_masks: bool = False         # reads the masks of the previous guided step's maps
    capturable: bool = False            # its pass can be kept as a CUDA graph

    @property
    def refines(self) -> bool:
        return bool(LOSS_THRESHOLDS[self.name])


LOSS_TABLE = {loss.name: loss for loss in (
    Loss("attend_and_excite", _attend_and_excite, capturable=True),
    Loss("syngen", _syngen, needs_pairs=True, reads_token_maps=True),
    Loss("divide_and_bind", _divide_and_bind, _variation_unmet, reads_modifier_maps=True, binding_schedule=True),
    Loss("a_star", _a_star, retains_masks=True),
)}
LOSSES = tuple(LOSS_TABLE)


def loss_named(name: str) -> Loss:
    if name not in LOSS_TABLE:
        raise ValueError(f"unknown loss {name!r}; pick one of {', '.join(LOSSES)}")
    return LOSS_TABLE[name]


def guidance_loss(name: str, maps: torch.Tensor, peaks: torch.Tensor, words: Words, tokens=None,
                  binding=0.0, previous_masks=None) -> LossValue:
    """The named loss at one evaluation. binding: Divide & Bind's weight at this step;
    previous_masks: A-STAR's masks of the previous guided step (None at the first)."""
    return loss_named(name).value(maps=maps, peaks=peaks, words=words, tokens=tokens, binding=binding,
                                  previous_masks=previous_masks)


def refinement_test(name: str):
    """(evaluation, threshold) -> (B,) rows still short of the threshold: Attend-and-Excite's
    while the loss is above 1 - threshold (the reference's test), Divide & Bind's while the
    smallest total variation is under it."""
    return loss_named(name).unmet
