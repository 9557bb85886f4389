"""The attention excitation (core/boost.py) as a model patch: attn2 replace patches on the
chosen cross-attention blocks, and a calc_cond_batch wrapper that tells them, for each
call of the model, which rows come from a conditioning with subjects (ComfyUI passes each
batch chunk's conditioning uuid to the attention patches)."""
import torch

import comfy.ldm.modules.attention as attention
import comfy.patcher_extension

from ..core.boost import excited, logit_bias, validate
from ..core.settings import BoostSettings
from .recorder import blocks_at_level, cross_attention_blocks
from .family import detect_family
from .text import SUBJECTS_KEY

ROWS_KEY = "attend_excite_boost"     # transformer_options[ROWS_KEY:id]: {"columns": {conditioning uuid: columns}}
WRAPPER_KEY = "attend_excite_boost"


class AttentionBoost:
    def __init__(self, settings: BoostSettings, token_indices: tuple = ()):
        validate(settings.alpha, settings.beta)
        self.alpha, self.beta, self.renormalise = settings.alpha, settings.beta, settings.renormalise
        self.percents = (settings.start_percent, settings.end_percent)
        self.token_indices = [c for subject in token_indices for c in subject]

    def subject_rows(self, conds: list) -> dict:
        """{uuid: columns} of the positive conditioning's entries that carry subjects."""
        rows = {}
        for entry in (conds[0] if conds else None) or []:
            info = entry.get(SUBJECTS_KEY)
            columns = self.token_indices or [c for s in (info or {}).get("subjects", []) for c in s]
            if not columns:
                continue
            tokens = entry["model_conds"]["c_crossattn"].cond.shape[1]
            if max(columns) >= tokens or min(columns) < 1:
                raise ValueError(f"attention boost: token index {max(columns)} is outside the conditioning's "
                                 f"{tokens} tokens; pick positions of the prompt's words (1 to {tokens - 1})")
            rows[entry["uuid"]] = columns
        return rows

    @property
    def key(self) -> str:
        """This boost's entry in transformer_options (two boosts chained on one model keep theirs apart)."""
        return f"{ROWS_KEY}:{id(self)}"

    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options):
        sampling = model.model_sampling
        start, end = (float(sampling.percent_to_sigma(p)) for p in self.percents)
        sigma = float(timestep.max())
        rows = self.subject_rows(conds) if end <= sigma <= start else {}
        if rows:
            options = model_options.get("transformer_options", {})
            model_options = {**model_options, "transformer_options": {**options, self.key: {"columns": rows}}}
        return executor(model, conds, x_in, timestep, model_options)

    def attn2(self, previous):
        def attend(q, k, v, extra_options):
            heads = extra_options["n_heads"]
            precision = extra_options.get("attn_precision")

            def plain(q, k, v):
                if previous is not None:
                    return previous(q, k, v, extra_options)
                return attention.optimized_attention(q, k, v, heads, attn_precision=precision)
            table = extra_options.get(self.key)
            if table is None:
                return plain(q, k, v)
            mask, rows, bias = self._mask(table, extra_options["uuids"], q.shape[0], k.shape[1], q.device, q.dtype)
            if rows is None:
                return plain(q, k, v)
            if self.renormalise and previous is None:
                # one kernel call for the whole batch: rows without subjects get a zero bias
                return attention.optimized_attention_masked(q, k, v, heads, bias, attn_precision=precision)
            out = plain(q, k, v).clone()
            out[rows] = excited(out[rows], q[rows], k[rows], v[rows], heads, mask[rows], self.alpha, self.beta,
                                self.renormalise)
            return out
        return attend

    def _mask(self, table: dict, uuids: list, batch: int, tokens: int, device, dtype) -> tuple:
        """(mask (batch, tokens) bool: each row's subject columns, the rows that have some or None,
        the renormalised rule's logit bias (batch, 1, tokens)), built once per model call, not per layer."""
        key = (tuple(uuids), batch, tokens, device, dtype)
        if table.get("key") != key:
            mask = torch.zeros(batch, tokens, dtype=torch.bool)
            per_chunk = batch // len(uuids)
            for chunk, uuid in enumerate(uuids):
                columns = table["columns"].get(uuid)
                if columns:
                    mask[chunk * per_chunk:(chunk + 1) * per_chunk, columns] = True
            rows = mask.any(dim=-1)
            bias = torch.where(rows[:, None], logit_bias(mask, self.alpha, self.beta), 0.0)[:, None, :]
            table["key"] = key
            table["built"] = (mask.to(device), rows.to(device) if rows.any() else None, bias.to(device, dtype))
        return table["built"]


def boosted_model(model, boost: AttentionBoost, map_level_only: bool):
    """A clone of `model` with the boost on every cross-attention block, or on the blocks of
    the family's map level; attn2 replace patches already there are wrapped."""
    diffusion_model = model.model.diffusion_model
    blocks = cross_attention_blocks(diffusion_model)
    if not blocks:
        raise ValueError("attention boost: this model has no cross-attention blocks (SD1.x, SD2.x and SDXL have; "
                         "SD3 and Flux attend to the text jointly, which the boost does not change)")
    if map_level_only:
        blocks = blocks_at_level(diffusion_model, detect_family(model.model).map_level)
    clone = model.clone()
    existing = clone.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for block in blocks:
        for index in range(block.depth):
            key = (block.name, block.number, index)
            clone.set_model_attn2_replace(boost.attn2(existing.get(key, existing.get(key[:2]))), *key)
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, WRAPPER_KEY,
                               boost.calc_cond_batch)
    return clone
