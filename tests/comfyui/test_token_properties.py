"""Property tests (hypothesis) of token resolution on ComfyUI's tokenizer and of the
tokenize route: each must hold for every prompt and every body."""
import asyncio
import json
import sys

from hypothesis import example, given
from hypothesis import strategies as st

from attend_and_excite.nodes.core.tokens import EMBEDDING, PIECE, SubjectError, resolve_subjects, words
from attend_and_excite.nodes.glue.routes import tokenize, tokenize_route
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
@given(text=st.text(max_size=300), subjects=st.text(max_size=60))
@example(text="a cat", subjects="²")          # a digit to str.isdigit, not to int()
def test_the_route_answers_any_text_and_subjects_field(text, subjects):
    answer = tokenize(text, subjects)
    assert set(answer) == {"tokens", "words", "automatic", "chosen", "error"}
    assert (answer["error"] is None) or answer["chosen"] == []


class Body:
    """What the route reads of an aiohttp request: its body stream, which hands out what
    has arrived so far (here, at most `piece` bytes a read) and b"" at its end."""

    def __init__(self, data: bytes, piece: int = 100):
        self.content = self
        self.data, self.piece = data, piece

    async def read(self, limit: int) -> bytes:
        chunk, self.data = self.data[:min(limit, self.piece)], self.data[min(limit, self.piece):]
        return chunk


AUDITED = []     # Python's audit events (open, socket.*, subprocess.*, os.*, ...) while `auditing`
auditing = False
sys.addaudithook(lambda event, args: AUDITED.append(event) if auditing else None)


async def audited_route_call(body: bytes):
    global auditing
    auditing = True
    try:
        return await tokenize_route(Body(body))
    finally:
        auditing = False


@QUICK
@given(text=st.text(max_size=300), subjects=st.text(max_size=40))
def test_the_route_opens_no_file_socket_or_process(text, subjects):
    tokenize("warm-up")       # the tokenizer's vocabulary is read once, at the first call
    AUDITED.clear()
    response = asyncio.run(audited_route_call(json.dumps({"text": text, "subjects": subjects}).encode()))
    assert response.status == 200 and AUDITED == []
