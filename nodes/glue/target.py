"""What one sampling call guides: the subjects' context columns as the model reads them, their
modifiers, the columns of the token softmax, and the schedule; read from the positive conditioning
and the node's settings once, before the first step."""
import logging
from dataclasses import dataclass

import torch

from ..core.families import PROMPT, Family
from ..core.losses import loss_named
from ..core.schedule import Schedule, build_schedule
from ..core.settings import Settings
from .text import SUBJECTS_KEY, context_shift, in_model_columns


@dataclass(frozen=True)
class Target:
    entry: dict                              # the positive conditioning entry the guidance pass runs on
    subjects: tuple[tuple[int, ...], ...]                # each subject's context columns
    modifiers: tuple[tuple[tuple[int, ...], ...], ...]   # each subject's modifiers' columns
    kept: torch.Tensor                                   # the columns of the token softmax
    prompt_columns: tuple[int, ...]                      # every prompt token's column (SynGen's token maps)
    labels: tuple[str, ...]                              # each subject's name in the log and on the heatmaps
    token_count: int                         # the conditioning's columns
    schedule: Schedule


def _subjects_entry(positive: list[dict], settings: Settings, family: Family) -> tuple[dict, dict]:
    for entry in positive:
        info = entry.get(SUBJECTS_KEY)
        if info is not None or settings.token_indices and family.context != PROMPT:
            return entry, info or {}
    if settings.token_indices:
        raise ValueError(f"on {family.name}, token_indices need the conditioning of 'CLIP Text Encode "
                         f"(Attend-and-Excite)': it marks which of the text encoder's columns are the prompt's words "
                         f"(the chat template's are not)")
    raise ValueError("the positive conditioning carries no Attend-and-Excite subjects: encode the prompt with "
                     "'CLIP Text Encode (Attend-and-Excite)', or give token_indices on the sampler")


def _check_columns(subjects: list[list[int]], kept: torch.Tensor, token_count: int, family: Family):
    scored = set(kept.tolist())
    for column in (c for s in subjects for c in s):
        if column >= token_count:
            raise ValueError(f"token index {column} is outside the conditioning's {token_count} tokens")
        if column not in scored:
            raise ValueError(f"token index {column} is not one of the tokens the method scores on {family.name} "
                             f"(the start token, and on some families the end token and padding, are left out); "
                             f"pick a word's position, as the token picker lists them")


def _check_loss(settings: Settings, modifiers: list):
    loss = loss_named(settings.loss)
    if loss.needs_pairs and not any(modifiers):
        raise ValueError(f"the {settings.loss} loss binds modifiers to their nouns, and no subject has one: describe "
                         f"the nouns in the prompt ('a red circle and a blue square'), or write each subject in "
                         f"'subjects' as a group that ends with its noun ('red circle, blue square'); token_indices "
                         f"give no modifiers")
    if not loss.refines and settings.thresholds:
        logging.warning("Attend-and-Excite: the %s loss never refines to a threshold (as its paper); the thresholds "
                        "are not used (set them to auto or leave them empty)", settings.loss)
    if loss.reads_modifier_maps and not any(modifiers):
        logging.info("Attend-and-Excite: no subject has a modifier, so divide_and_bind runs its attendance term alone")


def guidance_target(positive: list[dict], settings: Settings, family: Family, steps: int) -> Target:
    """The subjects come from the conditioning 'CLIP Text Encode (Attend-and-Excite)' made, or from
    token_indices; either way as the diffusion model receives the context (Flux.2 pads it on the left)."""
    entry, info = _subjects_entry(positive, settings, family)
    if family.refuses_reference_latents and "ref_latents" in entry["model_conds"]:
        raise ValueError(f"Attend-and-Excite guides {family.name}'s text-to-image models; the Edit models' "
                         f"reference images are not supported: sample without the reference latents, or "
                         f"with the stock KSampler")
    token_count = entry["model_conds"]["c_crossattn"].cond.shape[1]
    shift = context_shift(info, token_count, family)
    info = in_model_columns(info, shift)
    if settings.token_indices:
        subjects = [[c + shift for c in s] for s in settings.token_indices]
        modifiers = [[] for _ in subjects]
        labels = ["+".join(map(str, c)) for c in settings.token_indices]
    else:
        subjects = [list(c) for c in info["subjects"]]
        modifiers = info.get("modifiers", [[] for _ in subjects])
        labels = info["labels"]
    kept = family.kept(token_count, info.get("end_columns", []), info.get("prompt_columns", []))
    _check_columns(subjects, kept, token_count, family)
    _check_loss(settings, modifiers)
    return Target(entry=entry, subjects=tuple(map(tuple, subjects)),
                  modifiers=tuple(tuple(map(tuple, own)) for own in modifiers), kept=kept,
                  prompt_columns=tuple(info.get("prompt_columns", [])), labels=tuple(labels), token_count=token_count,
                  schedule=build_schedule(settings, steps, flow=family.flow))
