"""Subject resolution on ComfyUI's own SD1 tokenizer output."""
import json
import pathlib

import pytest

from support import REPO, tokens_of

from attend_and_excite.nodes.core.tokens import (END, PAD, PIECE, START, SubjectError, automatic_subjects,
                                                 resolve_subjects)

# The paper's 276 benchmark prompts, as the authors published them (see the README's Tests section).
PROMPTS = pathlib.Path(REPO) / "tests" / "data" / "ae_prompts.json"


def test_layout_marks_start_end_and_padding(tokenizer):
    tokens, ends = tokens_of(tokenizer, "a cat and a frog")
    kinds = [t.kind for t in tokens]
    assert len(tokens) == 77 and kinds[0] == START and kinds[6] == END and set(kinds[7:]) == {PAD}
    assert [t.text for t in tokens[1:6]] == ["a", "cat", "and", "a", "frog"]
    assert ends == [6]


def test_words_and_positions_resolve_to_the_papers_indices(tokenizer):
    tokens, _ = tokens_of(tokenizer, "a cat and a frog")
    assert [s.columns for s in resolve_subjects("cat, frog", tokens)] == [(2,), (5,)]
    assert [s.columns for s in resolve_subjects("2,5", tokens)] == [(2,), (5,)]
    assert [s.columns for s in resolve_subjects("", tokens)] == [(2,), (5,)]


def test_prompt_weights_do_not_shift_columns(tokenizer):
    tokens, _ = tokens_of(tokenizer, "a (cat:1.3) and a frog")
    assert [s.columns for s in resolve_subjects("cat, frog", tokens)] == [(2,), (5,)]


def test_multi_piece_word_maps_to_all_its_pieces(tokenizer):
    tokens, _ = tokens_of(tokenizer, "a man in a sombrero")
    pieces = [t for t in tokens if t.kind == PIECE]
    (subject,) = resolve_subjects("sombrero", tokens)
    assert len(subject.columns) > 1
    assert "".join(t.text for t in pieces if t.column in subject.columns) == "sombrero"


def test_repeated_word_takes_every_occurrence(tokenizer):
    tokens, _ = tokens_of(tokenizer, "a cat and a dog and a cat")
    (cat,) = resolve_subjects("cat", tokens)
    assert cat.columns == (2, 8)


def test_long_prompts_index_columns_of_the_concatenated_context(tokenizer):
    text = " ".join(["a red ball"] * 30) + " and a frog"
    tokens, ends = tokens_of(tokenizer, text)
    assert len(tokens) == 154 and len(ends) == 2 and tokens[77].kind == START
    (frog,) = resolve_subjects("frog", tokens)
    assert frog.columns[0] > 77 and tokens[frog.columns[0]].text == "frog"


@pytest.mark.parametrize("spec, fragment", [("dog", "'dog' is not a word of the prompt"),
                                            ("0", "the start token"), ("6", "the end token"),
                                            ("99", "out of range"), ("cat, 2", "repeats tokens")])
def test_bad_subjects_list_the_prompts_tokens(tokenizer, spec, fragment):
    tokens, _ = tokens_of(tokenizer, "a cat and a frog")
    with pytest.raises(SubjectError) as error:
        resolve_subjects(spec, tokens)
    assert fragment in str(error.value)
    if fragment != "repeats tokens":
        assert "2:cat" in str(error.value) and "5:frog" in str(error.value)


def expected_subjects(prompt):
    """The nouns of the paper's templates: 'a X and a Y', 'a X with a Y', 'a X and a <colour> Y'."""
    halves = prompt.split(" and ") if " and " in prompt else prompt.split(" with ")
    return [half.split()[-1] for half in halves]


def test_automatic_subjects_of_free_form_prompts_through_the_tokenizer(tokenizer):
    """The tagger's free-form set (tests/data/free_form_nouns.json), from the CLIP tokenizer's
    pieces: a compound is one subject holding both words' columns."""
    cases = json.loads((pathlib.Path(REPO) / "tests" / "data" / "free_form_nouns.json").read_text())
    for prompt, expected in cases.items():
        tokens, _ = tokens_of(tokenizer, prompt)
        found = automatic_subjects(tokens)
        assert [s.label for s in found] == expected, prompt
        for subject in found:
            assert " ".join(tokens[c].text for c in subject.columns).replace(" ", "") == subject.label.replace(" ", "")


def test_automatic_subjects_on_all_276_benchmark_prompts(tokenizer):
    prompts = [p for group in json.loads(PROMPTS.read_text()).values() for p in group]
    assert len(prompts) == 276
    for prompt in prompts:
        tokens, _ = tokens_of(tokenizer, prompt)
        found = ["".join(tokens[c].text for c in s.columns) for s in automatic_subjects(tokens)]
        assert found == expected_subjects(prompt), prompt
