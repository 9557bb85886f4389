"""The pack on the newest frontend on PyPI with Modern Node Design (Nodes 2.0) on, in headless Chromium:
the token picker renders and takes clicks, and no template node covers another or loads other widget
values than it saved, in Nodes 2.0 and on the classic canvas. Screenshots land in out/tests/nodes2/ (or
$AE_TEST_OUTPUT/nodes2)."""
import json
import os
import pathlib

import pytest

import support
from harness.browser import browser_page
from harness.layout import APP, TEMPLATES, boxes_of, newest_frontend, overlaps, set_mode
from harness.server import running_server

OUT = os.path.join(os.environ.get("AE_TEST_OUTPUT", pathlib.Path(support.REPO, "out", "tests")), "nodes2")


@pytest.fixture(scope="module")
def newest(mini_checkpoints):
    """A server that serves the newest frontend, and a page on it."""
    base, _ = mini_checkpoints
    with running_server(str(base), os.environ["COMFYUI_DIR"], front_end_root=newest_frontend()) as server, \
            browser_page(OUT) as page:
        page.page.set_default_timeout(180_000)
        yield server, page
        assert not page.blocked, f"the page tried to leave 127.0.0.1: {page.blocked}"


def test_an_overlap_is_found_and_a_touching_neighbour_is_not():
    assert overlaps({"1": [0, 0, 100, 100], "2": [50, 90, 100, 100], "3": [200, 0, 10, 10]}) == [("1", "2")]
    assert overlaps({"1": [0, 0, 100, 100], "2": [0, 100, 100, 100]}) == []


@pytest.mark.parametrize("nodes_2", [True, False], ids=["nodes-2.0", "classic"])
def test_no_template_node_covers_another(newest, nodes_2):
    server, page = newest
    set_mode(server, page, nodes_2)
    found, changed = {}, {}
    for path in TEMPLATES:
        workflow = json.loads(path.read_text())
        covered = overlaps(boxes_of(page, workflow))
        if covered:
            found[path.name] = covered
            page.screenshot(f"overlap-{path.stem}-{'nodes2' if nodes_2 else 'classic'}")
        for node in (n for n in workflow["nodes"] if n["type"].startswith("AttendExcite")):
            # widget values are saved by position: folded inputs must not move them
            shown = page.page.evaluate(f"(id) => {APP}.graph.getNodeById(id).serialize().widgets_values", node["id"])
            if shown != node["widgets_values"]:
                changed[f"{path.name} {node['type']}"] = shown
    assert found == {} and changed == {}
    if nodes_2:
        assert page.page.locator("[data-node-id]").count() > 0      # the Vue nodes were drawn, not the canvas's


def test_the_token_picker_renders_and_takes_clicks_in_nodes_2(newest):
    server, page = newest
    set_mode(server, page, True)
    workflow = json.loads(pathlib.Path(support.REPO, "example_workflows", "attend_and_excite_demo.json").read_text())
    boxes_of(page, workflow)
    encoder = next(n["id"] for n in workflow["nodes"] if n["type"] == "AttendExciteTextEncode")
    chip = f'[data-node-id="{encoder}"] .ae-word'
    page.page.wait_for_function(f"() => [...document.querySelectorAll('{chip}')]"
                                ".some(c => c.textContent.startsWith('triangle'))")
    page.screenshot("token-picker")
    subjects = f"(id) => {APP}.graph.getNodeById(id).widgets.find(w => w.name === 'subjects').value"
    assert page.page.evaluate(subjects, encoder) == "circle, triangle"
    page.page.locator(chip, has_text="triangle").first.click()
    page.page.wait_for_function(f"(id) => ({subjects})(id) === 'circle'", arg=encoder)
    page.page.locator(chip, has_text="triangle").first.click()
    page.page.wait_for_function(f"(id) => ({subjects})(id) === 'circle, triangle'", arg=encoder)
    page.screenshot("token-picker-clicked")
    assert [e for e in page.errors if e.startswith("page error") or "/extensions/attend-and-excite/" in e] == []
