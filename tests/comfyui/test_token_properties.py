"""Property tests (hypothesis) of token resolution on ComfyUI's tokenizer and of the
tokenize route: each must hold for every prompt and every body."""
import asyncio
import json
import sys
import types

import aiohttp
from aiohttp.base_protocol import BaseProtocol

from hypothesis import example, given
from hypothesis import strategies as st

from attend_and_excite.nodes.core.tokens import EMBEDDING, PIECE, SubjectError, resolve_subjects, words
from attend_and_excite.nodes.glue.routes import ENCODERS, tokenize, tokenize_route
from support import QUICK, tokens_of

WORDS = ["cat", "frog", "a", "and", "red", "porcupine", "with", "the", "embedding:foo", "(dog:1.3)", "[bird]",
         "\\(x\\)", "日本", "café", ",", ".", "  ", "\n", "😀", "with-hyphen", "x" * 40]
PROMPTS = st.one_of(st.text(max_size=400), st.lists(st.sampled_from(WORDS), max_size=120).map(" ".join))


@QUICK
@given(text=PROMPTS)
def test_any_prompt_resolves_to_its_own_words_or_a_subject_error(tokenizer, text):
    tokens, end_columns = tokens_of(tokenizer, text)
    assert len(tokens) % 77 == 0 and len(end_columns) == len(tokens) // 77
    kinds = {t.column: t.kind for t in tokens}
    try:
        automatic = resolve_subjects("", tokens)
    except SubjectError:
        automatic = []
    assert all(kinds[c] in (PIECE, EMBEDDING) for s in automatic for c in s.columns)
    for word in words(tokens)[:5]:
        # digits name a position by design ('2,5'), so a number word is chosen by its position instead
        if word.label.strip(",.;:!? ") and word.label != "<embedding>" and not word.label.isdigit():
            try:
                chosen = resolve_subjects(word.label, tokens)
            except SubjectError:
                continue       # a word that normalises to nothing, or one whose pieces another subject holds
            assert set(word.columns) <= set(chosen[0].columns)


@QUICK
@given(text=st.text(max_size=300), subjects=st.text(max_size=60), encoder=st.sampled_from(list(ENCODERS)))
@example(text="a cat", subjects="²", encoder="clip")          # a digit to str.isdigit, not to int()
def test_the_route_answers_any_text_and_subjects_field(text, subjects, encoder):
    answer = tokenize(text, subjects, encoder)
    assert set(answer) == {"tokens", "words", "automatic", "chosen", "error", "encoder", "tokens_of"}
    assert answer["encoder"] == encoder and ((answer["error"] is None) or answer["chosen"] == [])


def request_with_body(data: bytes, piece: int = 100) -> types.SimpleNamespace:
    """What the route reads of a request: aiohttp's own body stream, fed in pieces as a
    network delivers them, then closed."""
    reader = aiohttp.StreamReader(BaseProtocol(asyncio.get_running_loop()), 2 ** 16,
                                  loop=asyncio.get_running_loop())
    for start in range(0, len(data), piece):
        reader.feed_data(data[start:start + piece])
    reader.feed_eof()
    return types.SimpleNamespace(content=reader)


AUDITED = []     # Python's audit events (open, socket.*, subprocess.*, os.*, ...) while `auditing`
auditing = False
sys.addaudithook(lambda event, args: AUDITED.append(event) if auditing else None)


async def audited_route_call(body: bytes):
    global auditing
    request = request_with_body(body)
    auditing = True
    try:
        return await tokenize_route(request)
    finally:
        auditing = False


@QUICK
@given(text=st.text(max_size=300), subjects=st.text(max_size=40))
def test_the_route_opens_no_file_socket_or_process(text, subjects):
    tokenize("warm-up")       # the tokenizer's vocabulary is read once, at the first call
    AUDITED.clear()
    response = asyncio.run(audited_route_call(json.dumps({"text": text, "subjects": subjects}).encode()))
    assert response.status == 200 and AUDITED == []
