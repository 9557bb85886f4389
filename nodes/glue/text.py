"""Prompt tokens and subjects from a loaded CLIP, with ComfyUI's own tokenizer."""
import logging

from ..core.tokens import EMBEDDING, PIECE, layout, resolve_subjects

SUBJECTS_KEY = "attend_excite"


def encoder_tokenizer(tokenizer, tokenized: dict):
    """The encoder whose token columns the subjects index: Flux's T5 (its CLIP-L gives only the
    pooled vector); else CLIP-L where there is one (SD1.x; SDXL and SD3, whose CLIP-G has the same
    columns, SD3's T5 columns following them), else the only one (SD2.x: OpenCLIP-H)."""
    if "t5xxl" in tokenized and "g" not in tokenized:
        key = "t5xxl"
    else:
        key = "l" if "l" in tokenized else next(iter(tokenized))
    return tokenized[key], getattr(tokenizer, f"clip_{key}", None) or getattr(tokenizer, key)


def subject_info(tokenizer, tokenized: dict, subjects: str) -> dict:
    """What the sampler needs to know of the subjects: their context columns, labels, their
    modifiers' columns and labels (the binding losses'), every word's columns (the prompt's
    tokens, for SynGen's negative term) and each chunk's end-token column (for the models that
    drop from it on)."""
    chunks, encoder = encoder_tokenizer(tokenizer, tokenized)
    tokens, end_columns = layout(chunks, encoder.inv_vocab, encoder.start_token, encoder.end_token)
    chosen = resolve_subjects(subjects, tokens)
    logging.info("Attend-and-Excite subjects%s: %s", "" if subjects.strip() else " (automatic)",
                 ", ".join(f"{s.described()} {list(s.columns)}" for s in chosen))
    return {"subjects": [list(s.columns) for s in chosen], "labels": [s.label for s in chosen],
            "modifiers": [[list(m.columns) for m in s.modifiers] for s in chosen],
            "modifier_labels": [[m.label for m in s.modifiers] for s in chosen],
            "prompt_columns": [t.column for t in tokens if t.kind in (PIECE, EMBEDDING)],
            "end_columns": end_columns}


def encode_with_subjects(clip, text: str, subjects: str):
    """CONDITIONING as the stock CLIPTextEncode makes it, each entry carrying the
    subjects' context columns."""
    tokenized = clip.tokenize(text)
    info = subject_info(clip.tokenizer, tokenized, subjects)
    conditioning = clip.encode_from_tokens_scheduled(tokenized)
    return [[embedding, {**extra, SUBJECTS_KEY: info}] for embedding, extra in conditioning]
