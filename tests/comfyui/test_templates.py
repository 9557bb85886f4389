"""The templates (example_workflows/) as a user opens them: the pack's nodes keep the node
defaults unless the template means otherwise and its note says why, every widget has its
value, and every pack node carries the pack's identity (the Registry id and version) that
the frontend and ComfyUI-Manager read to offer the pack when it is missing."""
import asyncio
import glob
import json
import os
import tomllib

import pytest

from support import REPO
from attend_and_excite.nodes.extension import AttendExciteExtension

TEMPLATES = sorted(glob.glob(os.path.join(REPO, "example_workflows", "*.json")))
NOTES = {"Note", "MarkdownNote"}
# The stock sampling inputs, the prompt and the seed are each template's own: its model
# family's usual steps, cfg and scheduler, and what it draws.
WORKFLOW_OWN = {"seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise",
                "text", "subjects", "token_indices"}
# Pack inputs a template sets on purpose: (template, node, input) -> why. The template's note
# names each of these inputs.
INTENDED = {
    ("attend_and_excite_sd15_syngen.json", "AttendExciteKSampler", "loss"): "the template shows SynGen",
    ("attend_and_excite_demo_masks.json", "AttendExciteKSampler", "mask_threshold"):
        "hard masks, so the composite paints the subject's region and nothing else",
    ("attend_and_excite_demo_joint.json", "AttendExciteDemoModelLoader", "model"): "the joint-attention demo model",
}


def pack_nodes() -> dict:
    return {node.define_schema().node_id: node for node in asyncio.run(AttendExciteExtension().get_node_list())}


def widget_defaults(schema) -> list[tuple[str, object]]:
    """(input, default) of each widget in the order a saved workflow lists their values:
    required inputs, then optional ones; a seed's 'control after generate' after it."""
    out = []
    for item in sorted(schema.inputs, key=lambda i: bool(i.optional)):
        if not hasattr(item, "default"):
            continue                       # a socket (MODEL, CLIP, ...), no widget
        default = item.default
        if default is None and getattr(item, "options", None):
            default = item.options[0]      # a combo without a default shows its first option
        out.append((item.id, default))
        if getattr(item, "control_after_generate", None):
            out.append(("control_after_generate", "randomize"))
    return out


def template_nodes():
    for path in TEMPLATES:
        with open(path) as f:
            workflow = json.load(f)
        yield os.path.basename(path), workflow


def differences() -> dict:
    """(template, node, input) -> value, for every pack widget a template sets away from its default."""
    nodes = pack_nodes()
    found = {}
    for name, workflow in template_nodes():
        for node in workflow["nodes"]:
            if node["type"] not in nodes:
                continue
            values = node.get("widgets_values") or []
            defaults = widget_defaults(nodes[node["type"]].define_schema())
            assert len(values) == len(defaults), (name, node["type"], "a widget value is missing")
            for (item, default), value in zip(defaults, values):
                if item not in WORKFLOW_OWN and value != default:
                    found[name, node["type"], item] = value
    return found


def note_of(workflow) -> str:
    return "\n".join(n["widgets_values"][0] for n in workflow["nodes"] if n["type"] in NOTES)


def test_templates_keep_the_node_defaults_unless_their_note_says_why():
    found = differences()
    assert set(found) == set(INTENDED), \
        f"unexplained: {set(found) - set(INTENDED)}; stale: {set(INTENDED) - set(found)}"
    notes = dict((name, note_of(workflow)) for name, workflow in template_nodes())
    for template, _, item in INTENDED:
        assert f"{item}" in notes[template], f"{template}'s note does not say why {item} differs"


def test_a_template_that_overrides_a_default_is_found(tmp_path, monkeypatch):
    """The check itself: a template writing the old thresholds into the widget is reported."""
    import test_templates
    path = os.path.join(REPO, "example_workflows", "attend_and_excite_sd15.json")
    with open(path) as f:
        workflow = json.load(f)
    sampler = next(n for n in workflow["nodes"] if n["type"] == "AttendExciteKSampler")
    position = [item for item, _ in widget_defaults(pack_nodes()["AttendExciteKSampler"].define_schema())]
    sampler["widgets_values"][position.index("thresholds")] = "0:0.05, 10:0.5, 20:0.8"
    planted = tmp_path / "planted.json"
    planted.write_text(json.dumps(workflow))
    monkeypatch.setattr(test_templates, "TEMPLATES", [str(planted)])
    assert differences() == {("planted.json", "AttendExciteKSampler", "thresholds"): "0:0.05, 10:0.5, 20:0.8"}


def test_every_pack_node_in_a_template_carries_the_registry_id_and_version():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    nodes = pack_nodes()
    seen = 0
    for name, workflow in template_nodes():
        for node in workflow["nodes"]:
            if node["type"] in nodes:
                seen += 1
                properties = node.get("properties", {})
                assert (properties.get("cnr_id"), properties.get("ver")) == (project["name"], project["version"]), \
                    (name, node["type"], properties)
    assert seen >= 3 * len(TEMPLATES)


@pytest.mark.parametrize("name", [os.path.basename(p) for p in TEMPLATES])
def test_every_template_has_a_note(name):
    workflow = dict(template_nodes())[name]
    assert len(note_of(workflow)) > 200
