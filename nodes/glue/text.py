"""Prompt tokens and subjects from a loaded CLIP, with ComfyUI's own tokenizer."""
import logging

from ..core.tokens import EMBEDDING, PIECE, layout, prompt_span, resolve_subjects, templated_layout

SUBJECTS_KEY = "attend_excite"

# The LLM text encoders behind a chat template (their key in ComfyUI's tokenized prompt): Z-Image's and
# Flux.2 Klein's Qwen3, Qwen-Image's Qwen2.5-VL, Flux.2 dev's Mistral 3. Their subjects index the context
# the text encoder outputs: Qwen-Image's drops the template's head (the system prompt and the user turn's
# opening) before the diffusion model sees it.
TEMPLATED = {"qwen3_4b": False, "qwen3_8b": False, "qwen25_7b": True, "mistral3_24b": False}   # key: drops the head


def encoder_tokenizer(tokenizer, tokenized: dict):
    """(key, chunks, tokenizer) of the encoder whose token columns the subjects index: an LLM's where
    there is one; Flux's and Chroma's T5 (Flux's CLIP-L gives only the pooled vector); else CLIP-L where
    there is one (SD1.x; SDXL and SD3, whose CLIP-G has the same columns, SD3's T5 columns following
    them), else the only one (SD2.x: OpenCLIP-H)."""
    key = next((k for k in TEMPLATED if k in tokenized), None)
    if key is None and "t5xxl" in tokenized and "g" not in tokenized:
        key = "t5xxl"
    if key is None:
        key = "l" if "l" in tokenized else next(iter(tokenized))
    return key, tokenized[key], getattr(tokenizer, f"clip_{key}", None) or getattr(tokenizer, key)


def prompt_tokens(tokenizer, tokenized: dict, context_length: int | None = None):
    """(tokens, end columns): the prompt's tokens laid out as the text encoder's output columns (an LLM's
    behind a chat template has no end columns). context_length: that output's length, where known (an LLM
    encoder may drop the template's head: the difference is what it dropped); else the encoder's rule."""
    key, chunks, encoder = encoder_tokenizer(tokenizer, tokenized)
    if key not in TEMPLATED:
        return layout(chunks, encoder.inv_vocab, encoder.start_token, encoder.end_token)
    ids = [entry[0] for chunk in chunks for entry in chunk]
    empty = [entry[0] for chunk in tokenizer.tokenize_with_weights("")[key] for entry in chunk]
    pad = getattr(encoder, "pad_token", None)
    span = prompt_span(ids, empty, pad)
    dropped = span[0] if TEMPLATED[key] else 0
    if context_length is not None:
        dropped = len(ids) - context_length
    return templated_layout(ids, encoder.inv_vocab, span, pad, dropped), []


def subject_info(tokenizer, tokenized: dict, subjects: str, context_length: int | None = None) -> dict:
    """What the sampler needs to know of the subjects: their context columns, labels, their
    modifiers' columns and labels (the binding losses'), every word's columns (the prompt's
    tokens, for SynGen's negative term and the LLM families' token softmax), each chunk's end-token
    column (for the models that drop from it on) and the context's length (for the models that pad
    it on the left)."""
    tokens, end_columns = prompt_tokens(tokenizer, tokenized, context_length)
    templated = encoder_tokenizer(tokenizer, tokenized)[0] in TEMPLATED
    chosen = resolve_subjects(subjects, tokens)
    logging.info("Attend-and-Excite subjects%s: %s", "" if subjects.strip() else " (automatic)",
                 ", ".join(f"{s.described()} {list(s.columns)}" for s in chosen))
    return {"subjects": [list(s.columns) for s in chosen], "labels": [s.label for s in chosen],
            "modifiers": [[list(m.columns) for m in s.modifiers] for s in chosen],
            "modifier_labels": [[m.label for m in s.modifiers] for s in chosen],
            "prompt_columns": [t.column for t in tokens if t.kind in (PIECE, EMBEDDING)],
            "end_columns": end_columns,
            **({"context_length": len(tokens)} if templated else {})}


def context_shift(info: dict, token_count: int, family) -> int:
    """How many columns later the diffusion model reads the encode node's columns: a model that pads its
    context on the left (Flux.2) moves them by the padding it added."""
    return token_count - info.get("context_length", token_count) if family.context_padded_left else 0


def in_model_columns(info: dict, shift: int) -> dict:
    """The subjects' columns as the diffusion model receives the context, `shift` columns later."""
    if not shift:
        return info

    def moved(columns):
        return [moved(c) for c in columns] if isinstance(columns, list) else columns + shift
    return {**info, **{key: moved(info[key]) for key in ("subjects", "modifiers", "prompt_columns", "end_columns")
                       if key in info}}


def encode_with_subjects(clip, text: str, subjects: str):
    """CONDITIONING as the stock CLIPTextEncode makes it, each entry carrying the
    subjects' context columns."""
    tokenized = clip.tokenize(text)
    conditioning = clip.encode_from_tokens_scheduled(tokenized)
    info = subject_info(clip.tokenizer, tokenized, subjects, conditioning[0][0].shape[1])
    return [[embedding, {**extra, SUBJECTS_KEY: info}] for embedding, extra in conditioning]
