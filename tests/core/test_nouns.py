"""The automatic subject picker's noun tagger (nodes/core/nouns.py) on free-form prompts."""
import json
import pathlib
import re
import time

from attend_and_excite.nodes.core.nouns import ADJECTIVE, NOUN, VERB, noun_spans, tag

# Prompts written for this test with the nouns a tagger should find in each: subject-verb-
# object, participle and gerund phrases, compounds, plurals, adjectives that look like
# nouns, numbers.
FREE_FORM = json.loads((pathlib.Path(__file__).parents[1] / "data" / "free_form_nouns.json").read_text())


def split(prompt: str) -> list[str]:
    return re.findall(r"[\w'-]+|[^\w\s]", prompt)


def subjects(prompt: str) -> list[str]:
    words = split(prompt)
    return [" ".join(words[start:stop]) for start, stop in noun_spans(words)]


def test_free_form_prompts_give_their_nouns():
    assert len(FREE_FORM) >= 60
    wrong = {prompt: subjects(prompt) for prompt, expected in FREE_FORM.items() if subjects(prompt) != expected}
    assert not wrong


def test_a_verb_form_after_a_noun_is_a_verb_and_before_one_an_adjective():
    assert tag(split("a dog sleeping on a sofa"))[2] == VERB
    assert tag(split("a sleeping dog"))[1] == ADJECTIVE
    assert tag(split("a dog chases a cat"))[2] == VERB
    assert tag(split("two bears"))[1] == NOUN
    assert subjects("a building") == ["building"] and subjects("a dog sleeping") == ["dog"]


def test_the_tagger_is_small_and_fast():
    source = pathlib.Path(__file__).parents[2] / "nodes" / "core" / "nouns.py"
    assert source.stat().st_size < 16_000
    prompts = list(FREE_FORM) * 20
    started = time.perf_counter()
    for prompt in prompts:
        subjects(prompt)
    assert (time.perf_counter() - started) / len(prompts) < 1e-3       # under a millisecond per prompt
