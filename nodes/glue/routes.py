"""The frontend's server route: a prompt's tokens, word groups, automatic subjects and
the subjects a `subjects` field resolves to (each with its modifiers), from ComfyUI's bundled tokenizers (no model
is loaded): CLIP's (SD1.x, SD2.x, SDXL, SD3), T5's (Flux.1, Chroma), Qwen3's behind Z-Image's or Flux.2 Klein's
chat template, Qwen2.5-VL's behind Qwen-Image's (whose encoder drops the template's head). Flux.2 dev's
Mistral tokenizer lives in its text-encoder file: the route says what to do instead."""
import functools
import importlib
import json

from aiohttp import web

from ..core.tokens import PAD, PIECE, SubjectError, automatic_subjects, resolve_subjects, words
from .text import prompt_tokens

MAX_BODY_BYTES = 64 * 1024

# encoder -> (module, tokenizer class, what the picker calls its tokens)
ENCODERS = {"clip": ("comfy.sd1_clip", "SD1Tokenizer", "CLIP"),
            "t5": ("comfy.text_encoders.flux", "FluxTokenizer", "T5"),
            "qwen3": ("comfy.text_encoders.z_image", "ZImageTokenizer", "Qwen3"),
            "qwen3_klein": ("comfy.text_encoders.flux", "KleinTokenizer", "Qwen3"),
            "qwen25_vl": ("comfy.text_encoders.qwen_image", "QwenImageTokenizer", "Qwen2.5-VL"),
            "mistral": ("comfy.text_encoders.flux", "Flux2Tokenizer", "Mistral")}
UNAVAILABLE = {
    "mistral": "Flux.2 dev's tokenizer lives inside its text-encoder file, so the picker cannot list its tokens: "
               "write the subjects as words ('cat, frog'), or leave them empty for the nouns; the encode node "
               "resolves them when it runs",
    "qwen3_klein": "this ComfyUI has no Flux.2 Klein text encoder (it came after 0.3.75): update ComfyUI",
}


@functools.cache
def _tokenizer(encoder: str):
    """ComfyUI's tokenizer of `encoder`, or None where it cannot be made without a model file."""
    module, name, _ = ENCODERS[encoder]
    if encoder == "mistral":
        return None
    cls = getattr(importlib.import_module(module), name, None)
    return cls() if cls is not None else None


def _subject_list(subjects) -> list[dict]:
    return [{"text": s.label, "positions": list(s.columns),
             "modifiers": [{"text": m.label, "positions": list(m.columns)} for m in s.modifiers]} for s in subjects]


def tokenize(text: str, subjects: str = "", encoder: str = "clip") -> dict:
    """What the token picker shows; `chosen` is what the node will use, with `error`
    holding the message the node would stop with."""
    tokenizer = _tokenizer(encoder)
    answer = {"tokens": [], "words": [], "automatic": [], "chosen": [], "error": None, "encoder": encoder,
              "tokens_of": ENCODERS[encoder][2]}
    if tokenizer is None:
        return {**answer, "error": UNAVAILABLE[encoder]}
    tokens, _ = prompt_tokens(tokenizer, tokenizer.tokenize_with_weights(text))
    try:
        chosen, error = _subject_list(resolve_subjects(subjects, tokens)), None
    except SubjectError as problem:
        chosen, error = [], str(problem)
    by_column = {t.column: t for t in tokens}
    return {
        **answer,
        "tokens": [{"position": t.column, "text": t.text, "kind": t.kind} for t in tokens if t.kind != PAD],
        "words": [{"text": w.label, "positions": list(w.columns)} for w in words(tokens)
                  if all(by_column[c].kind == PIECE for c in w.columns)],
        "automatic": _subject_list(automatic_subjects(tokens)),
        "chosen": chosen,
        "error": error,
    }


async def read_body(content, limit: int) -> bytes | None:
    """The whole body, or None as soon as more than `limit` bytes have come. One read
    returns only what has arrived so far, so it reads until the end of the stream."""
    body = bytearray()
    while len(body) <= limit:
        chunk = await content.read(limit + 1 - len(body))
        if not chunk:
            return bytes(body)
        body += chunk
    return None


async def tokenize_route(request: web.Request) -> web.Response:
    body = await read_body(request.content, MAX_BODY_BYTES)
    if body is None:
        return web.json_response({"error": f"the body is over {MAX_BODY_BYTES} bytes"}, status=413)
    try:
        request_json = json.loads(body)
        text, subjects = request_json["text"], request_json.get("subjects", "")
        encoder = request_json.get("encoder", "clip")
        if not isinstance(text, str) or not isinstance(subjects, str) or encoder not in ENCODERS:
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return web.json_response({"error": 'send JSON like {"text": "a cat and a frog", "subjects": "cat", '
                                           '"encoder": "clip"} (encoder: ' + ", ".join(f'"{e}"' for e in ENCODERS)
                                           + ")"}, status=400)
    return web.json_response(tokenize(text, subjects, encoder))


def register_routes():
    """Adds the route when a ComfyUI server is running (not on plain imports)."""
    try:
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is not None:
        server.routes.post("/attend_excite/tokenize")(tokenize_route)
