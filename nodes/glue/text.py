"""Prompt tokens and subjects from a loaded CLIP, with ComfyUI's own tokenizer."""
import logging

from ..core.tokens import layout, resolve_subjects

SUBJECTS_KEY = "attend_excite"


def encoder_tokenizer(clip, tokenized: dict):
    """The tokenizer whose columns the subjects index (CLIP-L where there is one)."""
    key = "l" if "l" in tokenized else next(iter(tokenized))
    return key, getattr(clip.tokenizer, f"clip_{key}", None) or getattr(clip.tokenizer, key)


def encode_with_subjects(clip, text: str, subjects: str):
    """CONDITIONING as the stock CLIPTextEncode makes it, each entry carrying the
    subjects' context columns."""
    tokenized = clip.tokenize(text)
    key, tokenizer = encoder_tokenizer(clip, tokenized)
    tokens, end_columns = layout(tokenized[key], tokenizer.inv_vocab, tokenizer.start_token, tokenizer.end_token)
    chosen = resolve_subjects(subjects, tokens)
    logging.info("Attend-and-Excite subjects%s: %s", "" if subjects.strip() else " (automatic)",
                 ", ".join(f"{s.label} {list(s.columns)}" for s in chosen))
    info = {"subjects": [list(s.columns) for s in chosen], "labels": [s.label for s in chosen],
            "end_columns": end_columns}
    conditioning = clip.encode_from_tokens_scheduled(tokenized)
    return [[embedding, {**extra, SUBJECTS_KEY: info}] for embedding, extra in conditioning]
