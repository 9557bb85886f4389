"""The frontend's server route: a prompt's tokens, word groups, automatic subjects and
the subjects a `subjects` field resolves to (each with its modifiers), from ComfyUI's bundled tokenizers (no model
is loaded): CLIP's, whose columns SD1.x, SD2.x, SDXL and SD3 subjects index, or T5's,
whose columns Flux's do."""
import functools
import json

from aiohttp import web

from ..core.tokens import PAD, PIECE, SubjectError, automatic_subjects, layout, resolve_subjects, words

MAX_BODY_BYTES = 64 * 1024


ENCODERS = ("clip", "t5")


@functools.cache
def _tokenizer(encoder: str):
    if encoder == "t5":
        import comfy.text_encoders.sd3_clip
        return comfy.text_encoders.sd3_clip.T5XXLTokenizer()
    import comfy.sd1_clip
    return comfy.sd1_clip.SD1Tokenizer().clip_l


def _subject_list(subjects) -> list[dict]:
    return [{"text": s.label, "positions": list(s.columns),
             "modifiers": [{"text": m.label, "positions": list(m.columns)} for m in s.modifiers]} for s in subjects]


def tokenize(text: str, subjects: str = "", encoder: str = "clip") -> dict:
    """What the token picker shows; `chosen` is what the node will use, with `error`
    holding the message the node would stop with."""
    tokenizer = _tokenizer(encoder)
    chunks = tokenizer.tokenize_with_weights(text)
    tokens, _ = layout(chunks, tokenizer.inv_vocab, tokenizer.start_token, tokenizer.end_token)
    try:
        chosen, error = _subject_list(resolve_subjects(subjects, tokens)), None
    except SubjectError as problem:
        chosen, error = [], str(problem)
    return {
        "tokens": [{"position": t.column, "text": t.text, "kind": t.kind} for t in tokens if t.kind != PAD],
        "words": [{"text": w.label, "positions": list(w.columns)} for w in words(tokens)
                  if all(tokens[c].kind == PIECE for c in w.columns)],
        "automatic": _subject_list(automatic_subjects(tokens)),
        "chosen": chosen,
        "error": error,
        "encoder": encoder,
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
                                           '"encoder": "clip"} (encoder: "clip" or "t5")'}, status=400)
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
