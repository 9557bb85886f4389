"""The attention excitation (core/boost.py) and the attention temperature as model patches: on
UNets attn2 replace patches on the chosen cross-attention blocks; on the joint-attention families
(SD3, Flux.1, Flux.2, Chroma, Qwen-Image, Z-Image) the joint attention calls of the blocks their maps
come from (joint.py), where the image queries' logits over the text keys are shifted by the subjects'
weights (the renormalised rule) and scaled by the temperature, and nothing else changes. A
calc_cond_batch wrapper tells the patches, for each call of the model, which rows come from a
conditioning with subjects (ComfyUI passes each batch chunk's conditioning uuid to the attention)."""
import torch

import comfy.ldm.modules.attention as attention
import comfy.patcher_extension

from ..core.boost import excited, logit_bias, validate
from ..core.families import CLIP, CLIP_T5, JOINT_BLOCKS, JOINT_LAYERS
from ..core.settings import BoostSettings, TemperatureSettings
from .family import detect_family
from .joint import hook_blocks, hook_layers, joint_blocks, single_stream_lengths
from .recorder import blocks_at_level, cross_attention_blocks
from .text import SUBJECTS_KEY, context_shift

ROWS_KEY = "attend_excite_boost"     # transformer_options[ROWS_KEY:id]: {"columns": {conditioning uuid: columns}}
WRAPPER_KEY = "attend_excite_boost"


class AttentionBoost:
    def __init__(self, settings: BoostSettings, token_indices: tuple = (),
                 temperature: TemperatureSettings | None = None):
        """settings: the subjects' weights (alpha, beta) and their steps; temperature: the image queries'
        text logits' scale and its steps (joint attention only; None: no temperature)."""
        validate(settings.alpha, settings.beta)
        self.alpha, self.beta, self.renormalise = settings.alpha, settings.beta, settings.renormalise
        self.weighs = (self.alpha, self.beta) != (1.0, 1.0)
        self.percents = (settings.start_percent, settings.end_percent)
        self.temperature, self.temperature_percents = (temperature.temperature, (
            temperature.start_percent, temperature.end_percent)) if temperature else (1.0, (0.0, 0.0))
        self.token_indices = [c for subject in token_indices for c in subject]
        self.family = None      # the model's, once patched; single-stream models: their main layers' count
        self.layers = 0

    def subject_rows(self, conds: list) -> dict:
        """{uuid: columns} of the positive conditioning's entries that carry subjects, in the columns the
        model receives."""
        rows = {}
        first = 1 if self.family.context in (CLIP, CLIP_T5) else 0       # CLIP's start token is no word
        for entry in (conds[0] if conds else None) or []:
            info = entry.get(SUBJECTS_KEY) or {}
            tokens = entry["model_conds"]["c_crossattn"].cond.shape[1]
            shift = context_shift(info, tokens, self.family)
            columns = [c + shift for c in self.token_indices or [c for s in info.get("subjects", []) for c in s]]
            if not columns:
                continue
            if max(columns) >= tokens or min(columns) < first:
                raise ValueError(f"attention boost: token index {max(columns)} is outside the conditioning's "
                                 f"{tokens} tokens; pick positions of the prompt's words ({first} to {tokens - 1})")
            rows[entry["uuid"]] = columns
        return rows

    @property
    def key(self) -> str:
        """This boost's entry in transformer_options (two boosts chained on one model keep theirs apart)."""
        return f"{ROWS_KEY}:{id(self)}"

    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options):
        sampling = model.model_sampling
        sigma = float(timestep.max())

        def within(percents):
            start, end = (float(sampling.percent_to_sigma(p)) for p in percents)
            return end <= sigma <= start
        rows = self.subject_rows(conds) if self.weighs and within(self.percents) else {}
        scale = self.temperature if within(self.temperature_percents) else 1.0
        if rows or scale != 1.0:
            table = {"columns": rows, "temperature": scale}
            if self.family.maps == JOINT_LAYERS:
                # The single-stream layers' sequences of this call's conditionings (each padded text, then
                # the padded image) -> their padded text's length; the main layers counted per sequence.
                lengths = [single_stream_lengths(model.diffusion_model,
                                                 entry["model_conds"]["c_crossattn"].cond.shape[1], x_in.shape)
                           for group in conds if group for entry in group]
                table.update(texts={joint: text for text, joint in lengths}, calls={})
            options = model_options.get("transformer_options", {})
            model_options = {**model_options, "transformer_options": {**options, self.key: table}}
        return executor(model, conds, x_in, timestep, model_options)

    def joint(self, func, call: tuple, kwargs: dict, proceed, text_length: int, number: int = 0):
        """A joint attention call of a hooked block: proceeds with a kernel that shifts the image queries'
        text logits by the subjects' weights (rows with subjects) and scales them by the temperature."""
        table = (kwargs.get("transformer_options") or {}).get(self.key)
        if table is None:
            return proceed(func)
        q = call[0]
        bias = None
        if table["columns"]:
            mask, rows, _ = self._mask(table, kwargs["transformer_options"]["uuids"], q.shape[0], text_length,
                                       q.device, q.dtype)
            if rows is not None:
                bias = torch.where(rows[:, None], logit_bias(mask, self.alpha, self.beta), 0.0).to(q.dtype)
        if bias is None and table["temperature"] == 1.0:
            return proceed(func)
        return proceed(SteeredKernel.around(func, text_length, bias, table["temperature"]))

    def is_joint_layer(self, kwargs: dict, length: int) -> bool:
        return length in (kwargs.get("transformer_options") or {}).get(self.key, {}).get("texts", ())

    def joint_layer(self, func, call: tuple, kwargs: dict, proceed, length: int):
        """A single-stream main layer's call: steered in the layers the family's maps come from."""
        table = kwargs["transformer_options"][self.key]
        layer = table["calls"].get(length, 0)
        table["calls"][length] = layer + 1
        if layer >= self.family.recorded_count(self.layers):
            return proceed(func)
        return self.joint(func, call, kwargs, proceed, table["texts"][length])

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


class SteeredKernel:
    """An attention kernel whose joint [text, image] calls run in two: the text queries as they are, the
    image queries over keys whose text part is scaled by `temperature` (their text logits scaled, their
    image logits unchanged) with `bias` (B, T) added to their text logits; an attention mask of the call
    still applies. Two kernel calls, no (queries x keys) matrix kept. Two steerings of one call combine
    into one (their biases add, their temperatures multiply); the kernel keeps its name, which the
    guidance pass reads to swap a kernel without a backward (guidance.with_backward_attention)."""

    def __init__(self, kernel, text_length: int, bias: torch.Tensor | None, temperature: float):
        self.kernel, self.text_length, self.bias, self.temperature = kernel, text_length, bias, temperature
        self.__name__ = getattr(kernel, "__name__", "")

    @classmethod
    def around(cls, kernel, text_length: int, bias, temperature: float) -> "SteeredKernel":
        if isinstance(kernel, SteeredKernel):
            total = kernel.bias if bias is None else bias if kernel.bias is None else kernel.bias + bias
            return cls(kernel.kernel, text_length, total, kernel.temperature * temperature)
        return cls(kernel, text_length, bias, temperature)

    def on(self, kernel) -> "SteeredKernel":
        """The same steering around another kernel."""
        return SteeredKernel(kernel, self.text_length, self.bias, self.temperature)

    def __call__(self, *call, **kwargs):
        q, k = call[0], call[1]
        text_length = self.text_length
        axis = 2 if kwargs.get("skip_reshape", False) else 1         # the tokens' axis of q, k and v
        mask = call[4] if len(call) > 4 else kwargs.get("mask")
        size, keys = q.shape[axis], k.shape[axis]
        image_keys = k if self.temperature == 1.0 else torch.cat(
            [k.narrow(axis, 0, text_length) * self.temperature, k.narrow(axis, text_length, keys - text_length)],
            dim=axis)
        image_mask = None
        if self.bias is not None:
            image_mask = torch.nn.functional.pad(self.bias, (0, keys - text_length))[:, None, None, :]
        if mask is not None:
            full = mask[None] if mask.ndim == 2 else mask
            full = full[:, None] if full.ndim == 3 else full
            if full.dtype == torch.bool:
                full = torch.zeros(full.shape, dtype=q.dtype, device=q.device).masked_fill(~full, float("-inf"))
            rows = (lambda start, length: full.narrow(-2, start, length)) if full.shape[-2] > 1 else (lambda *_: full)
            image_mask = rows(text_length, size - text_length) + (0 if image_mask is None else image_mask)
            mask = rows(0, text_length)

        def part(queries, part_keys, part_mask):
            named = dict(kwargs)
            if len(call) > 4:
                return self.kernel(queries, part_keys, *call[2:4], part_mask, *call[5:], **named)
            named["mask"] = part_mask
            return self.kernel(queries, part_keys, *call[2:4], **named)
        text = part(q.narrow(axis, 0, text_length), k, mask)
        image = part(q.narrow(axis, text_length, size - text_length), image_keys, image_mask)
        return torch.cat([text, image], dim=2 if kwargs.get("skip_output_reshape", False) else 1)


def boosted_model(model, boost: AttentionBoost, map_level_only: bool):
    """A clone of `model` with the boost on every cross-attention block, or on the blocks of the family's
    map level (UNets), or on the joint attention of the blocks the family's maps come from; attn2 and dit
    replace patches and attention overrides already there are wrapped."""
    diffusion_model = model.model.diffusion_model
    boost.family = detect_family(model.model)
    clone = model.clone()
    if boost.family.joint:
        if boost.family.maps == JOINT_BLOCKS:
            clone.model_options = hook_blocks(clone.model_options, joint_blocks(diffusion_model, boost.family.blocks),
                                              boost.joint)
        else:
            boost.layers = len(getattr(diffusion_model, boost.family.blocks))
            clone.model_options = hook_layers(clone.model_options, boost.is_joint_layer, boost.joint_layer)
    else:
        if boost.temperature != 1.0:
            raise ValueError("attention temperature: this model attends to the text by cross-attention, whose "
                             "softmax holds the text alone, so a temperature sharpens the text tokens against each "
                             "other instead of against the image; on SD1.x, SD2.x and SDXL use the Attention Boost")
        blocks = cross_attention_blocks(diffusion_model)
        if map_level_only:
            blocks = blocks_at_level(diffusion_model, boost.family.map_level)
        existing = clone.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
        for block in blocks:
            for index in range(block.depth):
                key = (block.name, block.number, index)
                clone.set_model_attn2_replace(boost.attn2(existing.get(key, existing.get(key[:2]))), *key)
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, WRAPPER_KEY,
                               boost.calc_cond_batch)
    return clone
