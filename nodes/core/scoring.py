"""The loss side of one sampling call's guidance: from the attention a pass recorded to the chosen
loss, the subjects' peaks and their maps, with what the column bookkeeping and the per-step state
of some losses (Divide & Bind's weight, A-STAR's masks) need."""
import torch

from .losses import LossValue, Words, loss_named, retention_masks
from .maps import SubjectScorer, gaussian_kernel


class GuidanceLoss:
    def __init__(self, *, loss: str, subjects, kept: torch.Tensor, modifiers, prompt_columns, smoothing_kernel: int,
                 smoothing_sigma: float):
        """subjects: each subject's context columns; kept: the columns of the token softmax; modifiers: each
        subject's modifiers' columns; prompt_columns: every prompt token's (SynGen's token maps). Sequences of
        columns, lists or tuples."""
        subjects = [list(s) for s in subjects]
        modifiers = [[list(m) for m in own] for own in modifiers]
        self.loss = loss_named(loss)
        used = {c for s in subjects for c in s} | {c for own in modifiers for m in own for c in m}
        prompt_columns = sorted(used | set(prompt_columns))
        self.words = Words.of(subjects, modifiers, prompt_columns)
        scored = subjects + [m for own in modifiers for m in own] if self.loss.reads_modifier_maps else subjects
        with torch.inference_mode(False):  # autograd saves these; inference tensors it cannot
            self.scorer = SubjectScorer(scored, kept.clone(), gaussian_kernel(smoothing_kernel, smoothing_sigma))
            self.token_columns = torch.tensor(prompt_columns, dtype=torch.long)
        self.binding = 0.0            # Divide & Bind's weight at the current step
        self.previous_masks = None    # A-STAR's masks of the previous guided step

    def to(self, device) -> "GuidanceLoss":
        """Its index and kernel tensors on `device`, once per sampling call."""
        self.scorer.to(device)
        self.token_columns = self.token_columns.to(device)
        return self

    def begin_step(self, binding: float):
        """binding: Divide & Bind's weight at the step about to be guided."""
        self.binding = binding

    def end_step(self, maps: torch.Tensor):
        """A-STAR retains what the step's last evaluation, the one its update used, found."""
        if self.loss.retains_masks:
            self.previous_masks = retention_masks(maps)

    def __call__(self, attention: torch.Tensor) -> tuple[LossValue, torch.Tensor, torch.Tensor]:
        """attention: (B, h, w, T) averaged over the recorded layers and heads -> (the loss's value, the
        subjects' peaks (B, S), their maps (B, S, h, w))."""
        maps = self.scorer.maps(attention)
        subject_maps = maps[:, :self.words.subjects]
        peaks = subject_maps.amax(dim=(-1, -2))
        tokens = attention[..., self.token_columns].flatten(1, 2).transpose(1, 2) if self.loss.reads_token_maps \
            else None
        value = self.loss.value(maps=maps, peaks=peaks, words=self.words, tokens=tokens, binding=self.binding,
                                previous_masks=self.previous_masks)
        return value, peaks, subject_maps
