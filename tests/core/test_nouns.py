"""The automatic subject picker's noun tagger (nodes/core/nouns.py) on free-form prompts."""
import json
import pathlib
import re
import time

from attend_and_excite.nodes.core.nouns import ADJECTIVE, NOUN, VERB, noun_phrases, noun_spans, tag

# Prompts written for this test with the nouns a tagger should find in each: subject-verb-
# object, participle and gerund phrases, compounds, plurals, adjectives that look like
# nouns, numbers.
FREE_FORM = json.loads((pathlib.Path(__file__).parents[1] / "data" / "free_form_nouns.json").read_text())
# Prompts written the way ComfyUI users write them (quality and style tags, weights, camera and
# resolution terms, BREAK, LoRA tags, embeddings), with their nouns and each noun's modifiers.
TAG_LISTS = json.loads((pathlib.Path(__file__).parents[1] / "data" / "tag_list_prompts.json").read_text())


def split(prompt: str) -> list[str]:
    return re.findall(r"[\w'-]+|[^\w\s]", prompt)


def subjects(prompt: str) -> list[str]:
    words = split(prompt)
    return [" ".join(words[start:stop]) for start, stop in noun_spans(words)]


def test_free_form_prompts_give_their_nouns():
    assert len(FREE_FORM) >= 60
    wrong = {prompt: subjects(prompt) for prompt, expected in FREE_FORM.items() if subjects(prompt) != expected}
    assert not wrong


def pairs(prompt: str) -> dict:
    words = split(prompt)
    return {" ".join(words[start:stop]): [words[m] for m in modifiers]
            for (start, stop), modifiers in noun_phrases(words) if modifiers}


def test_tag_list_prompts_give_their_nouns_and_modifiers_and_no_tag_is_a_subject():
    assert len(TAG_LISTS) >= 30
    wrong = {prompt: (subjects(prompt), pairs(prompt)) for prompt, expected in TAG_LISTS.items()
             if (subjects(prompt), pairs(prompt)) != (expected["nouns"], expected["pairs"])}
    assert not wrong


def test_colours_materials_and_adjectives_before_a_noun_modify_it_and_no_other_noun():
    assert pairs("a red circle and a blue square") == {"circle": ["red"], "square": ["blue"]}
    assert pairs("a big red ball next to a dog") == {"ball": ["big", "red"]}
    assert pairs("a brown teddy bear") == {"teddy bear": ["brown"]}
    assert pairs("a red hat on a cat") == {"hat": ["red"]}                  # a phrase ends at 'on'
    assert subjects("an orange") == ["orange"] and pairs("an orange") == {}


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
