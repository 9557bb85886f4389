"""Which context columns belong to which subject.

Works on the tokenizer's output laid out as context columns (several 77-token
chunks for long prompts, each with its own start and end token). A subject is
given as words ("cat, frog"), as column positions ("2,5"), or found
automatically (the nouns, nouns.py). A subject also carries its modifiers (the colours,
materials and adjectives that describe it), which the binding losses read: the tagger's
for automatic subjects; for a written group ("red circle, blue square") the words before
its noun (its last word, with the nouns right before it: "teddy bear").
"""
import re
from dataclasses import dataclass, replace

from .nouns import NOUN, noun_phrases, tag

START, END, PAD, PIECE, EMBEDDING = "start", "end", "pad", "piece", "embedding"
TEMPLATE = "template"              # a chat template's token around the prompt (special tokens included)
SENTENCEPIECE_SPACE = "\u2581"     # SentencePiece's mark of a word's first piece


@dataclass(frozen=True)
class Token:
    column: int
    kind: str
    text: str = ""            # the piece, without its word mark
    word_end: bool = True     # the piece closes a word (CLIP's BPE marks a word's last piece)
    word_start: bool = False  # the piece opens a word (T5's SentencePiece marks a word's first piece)


@dataclass(frozen=True)
class Subject:
    label: str
    columns: tuple[int, ...]
    modifiers: tuple["Subject", ...] = ()     # each modifier word, with its columns

    def described(self) -> str:
        """'red circle' for a subject with modifiers, its label otherwise."""
        return " ".join([m.label for m in self.modifiers] + [self.label])


class SubjectError(ValueError):
    pass


def words(tokens: list[Token]) -> list[Subject]:
    """Group the pieces into words; an embedding is one word of its own."""
    out, text, columns = [], "", []
    for token in tokens:
        if token.kind != PIECE and columns:
            out.append(Subject(text, tuple(columns)))
            text, columns = "", []
        if token.kind == EMBEDDING:
            out.append(Subject("<embedding>", (token.column,)))
        if token.kind != PIECE:
            continue
        if token.word_start and columns:
            out.append(Subject(text, tuple(columns)))
            text, columns = "", []
        text += token.text
        columns.append(token.column)
        if token.word_end:
            out.append(Subject(text, tuple(columns)))
            text, columns = "", []
    if columns:
        out.append(Subject(text, tuple(columns)))
    return out


def describe(tokens: list[Token]) -> str:
    """'1:a 2:cat 3:and ...', the prompt's tokens with their positions."""
    shown = [f"{t.column}:{t.text if t.kind == PIECE else '<' + t.kind + '>'}"
             for t in tokens if t.kind in (PIECE, EMBEDDING)]
    return " ".join(shown) or "(no tokens)"


def _normalise(word: str) -> str:
    return re.sub(r"[^\w]", "", word.lower())


def _joined(found: list[Subject]) -> Subject:
    return Subject(" ".join(w.label for w in found), tuple(c for w in found for c in w.columns))


def automatic_subjects(tokens: list[Token]) -> list[Subject]:
    """The nouns a part-of-speech tagger would find, a compound ('teddy bear') as one
    subject, with their modifiers (nouns.py); embeddings are never subjects."""
    found = []
    all_words = words(tokens)
    for (start, stop), modifiers in noun_phrases([w.label for w in all_words]):
        kept = [w for w in all_words[start:stop] if w.label != "<embedding>"]
        if kept:
            found.append(replace(_joined(kept), modifiers=tuple(all_words[m] for m in modifiers)))
    return found


def _by_position(text: str, tokens: list[Token]) -> Subject:
    column = int(text)
    by_column = {t.column: t for t in tokens}
    token = by_column.get(column)
    if token is None or token.kind not in (PIECE, EMBEDDING):
        what = "out of range" if token is None else f"the {token.kind} token"
        raise SubjectError(f"subject position {column} is {what}. Pick a position among the prompt's "
                           f"tokens: {describe(tokens)}")
    return Subject(token.text or f"<{token.kind}>", (column,))


def _by_words(phrase: str, tokens: list[Token]) -> Subject:
    wanted = [_normalise(w) for w in phrase.split()]
    classes = tag(phrase.split())
    noun_start = len(wanted) - 1
    while noun_start > 0 and classes[noun_start - 1] == NOUN:
        noun_start -= 1
    all_words = words(tokens)
    keys = [_normalise(w.label) for w in all_words]
    found = [all_words[start:start + len(wanted)] for start in range(len(all_words) - len(wanted) + 1)
             if keys[start:start + len(wanted)] == wanted]
    if not found:
        raise SubjectError(f"subject {phrase!r} is not a word of the prompt. The prompt's tokens are: "
                           f"{describe(tokens)}")
    modifiers = tuple(Subject(phrase.split()[m], tuple(c for match in found for c in match[m].columns))
                      for m in range(noun_start))
    return Subject(" ".join(phrase.split()[noun_start:]),
                   tuple(c for match in found for w in match[noun_start:] for c in w.columns), modifiers)


def resolve_subjects(spec: str, tokens: list[Token]) -> list[Subject]:
    """Subjects from 'cat, frog' (every occurrence of each word counts, scored by its
    strongest piece; 'red circle' is the noun 'circle' with the modifier 'red'), from
    positions '2,5', or automatically from an empty spec."""
    items = [item.strip() for item in re.split(r"[,;\n]", spec) if item.strip()]
    if not items:
        subjects = automatic_subjects(tokens)
        if not subjects:
            raise SubjectError(f"no subject found automatically; name them in 'subjects'. The prompt's "
                               f"tokens are: {describe(tokens)}")
    else:
        subjects = [_by_position(i, tokens) if i.isascii() and i.isdigit() else _by_words(i, tokens) for i in items]
    seen = set()
    for subject in subjects:
        if set(subject.columns) & seen:
            raise SubjectError(f"subject {subject.label!r} repeats tokens already chosen by another subject; "
                               f"list each subject once")
        seen.update(subject.columns)
    return subjects


def layout(chunks: list[list], vocab: dict, start_id, end_id) -> tuple[list[Token], list[int]]:
    """Context columns of a tokenized prompt: chunks of (token, weight[, word id])
    as ComfyUI's tokenizer returns them (CLIP's BPE or T5's SentencePiece; T5 has no start
    token: start_id None). A token that is not an int is an embedding vector. Returns the
    tokens and each chunk's end-token column."""
    tokens, end_columns, column = [], [], 0
    sentencepiece = any(piece.startswith(SENTENCEPIECE_SPACE) for piece in vocab.values())
    for chunk in chunks:
        ended = False
        for index, entry in enumerate(chunk):
            token = entry[0]
            if not isinstance(token, int):
                tokens.append(Token(column, EMBEDDING))
            elif index == 0 and token == start_id:
                tokens.append(Token(column, START))
            elif token == end_id or ended:
                tokens.append(Token(column, PAD if ended else END))
                if not ended:
                    end_columns.append(column)
                ended = True
            elif sentencepiece:
                piece = vocab.get(token, "")
                # punctuation follows a word without a space but is no part of it
                starts = piece.startswith(SENTENCEPIECE_SPACE) or not re.search(r"\w", piece)
                tokens.append(Token(column, PIECE, piece.removeprefix(SENTENCEPIECE_SPACE), False, starts))
            else:
                piece = vocab.get(token, "")
                tokens.append(Token(column, PIECE, piece.removesuffix("</w>"), piece.endswith("</w>")))
            column += 1
    return tokens, end_columns


def parse_token_indices(text: str) -> tuple:
    """'2+3, 5' -> ((2, 3), (5,))."""
    subjects = []
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        pieces = [p.strip() for p in item.split("+")]
        if not all(p.isascii() and p.isdigit() for p in pieces):
            raise ValueError(f"token_indices: cannot read {item!r}; write positions such as '2,5' or '2+3,5'")
        subjects.append(tuple(int(p) for p in pieces))
    return tuple(subjects)


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's table, which Qwen's and Mistral's
    tokenizers use): the printable Latin-1 bytes stand for themselves, the others for 256 + n in order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in kept:
            table[chr(byte)] = byte
        else:
            table[chr(256 + extra)] = byte
            extra += 1
    return table


BYTE_OF = _byte_level_alphabet()
BYTE_LEVEL_SPACE = next(c for c, b in BYTE_OF.items() if b == ord(" "))    # 'Ġ', the mark of a word's start


def prompt_span(ids: list[int], empty_ids: list[int], pad_id=None) -> tuple[int, int]:
    """[start, stop) of the prompt's own tokens in a templated tokenization `ids`, from the same
    template's tokenization with an empty prompt: what precedes is the template's head (the start
    token, a system prompt, the user turn's opening), what follows its tail and the padding."""
    def unpadded(seq):
        start, stop = 0, len(seq)
        while start < stop and seq[start] == pad_id:
            start += 1
        while stop > start and seq[stop - 1] == pad_id:
            stop -= 1
        return start, stop
    (start, stop), (empty_start, empty_stop) = unpadded(ids), unpadded(empty_ids)
    head = 0
    while head < min(stop - start, empty_stop - empty_start) and ids[start + head] == empty_ids[empty_start + head]:
        head += 1
    tail = 0
    while tail < min(stop - start - head, empty_stop - empty_start - head) and \
            ids[stop - 1 - tail] == empty_ids[empty_stop - 1 - tail]:
        tail += 1
    return start + head, stop - tail


def templated_layout(ids: list, vocab: dict, span: tuple[int, int], pad_id=None, dropped: int = 0) -> list[Token]:
    """Context columns of a prompt tokenized inside a chat template by a byte-level BPE (Qwen's, Mistral's
    tekken): the pieces in `span` are the prompt's, a piece whose text starts with a space opens a word
    (as does punctuation), pieces outside are the template's, `pad_id` pads. The text encoder drops the
    first `dropped` tokens before the diffusion model sees the context (Qwen-Image's system prompt):
    column = position - dropped. A token that is not an int is an embedding vector."""
    tokens, pending = [], b""
    for position, token in enumerate(ids):
        column = position - dropped
        inside = span[0] <= position < span[1]
        if not isinstance(token, int):
            kind = EMBEDDING
        elif token == pad_id and not inside:
            kind = PAD
        else:
            kind = PIECE if inside else TEMPLATE
        if kind != PIECE:
            pending = b""
            if column >= 0:
                tokens.append(Token(column, kind, "" if kind != TEMPLATE else vocab.get(token, "")))
            continue
        piece = vocab.get(token, "")
        # A character's bytes may be split over pieces: each piece shows what its bytes complete.
        pending += bytes(BYTE_OF.get(c, ord("?")) for c in piece)
        try:
            text, pending = pending.decode("utf-8"), b""
        except UnicodeDecodeError:
            text = ""
        starts = position == span[0] or piece.startswith(BYTE_LEVEL_SPACE) or not re.search(r"\w", text or "x")
        if column >= 0:
            tokens.append(Token(column, PIECE, text.strip(), False, starts))
    return tokens
