"""The package in ComfyUI's real frontend (the one the server ships), in headless Chromium.

Screenshots of every state land in out/tests/browser/ (or $AE_TEST_OUTPUT/browser).
"""
import json
import os
import pathlib
import re

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

import support

import tiny_families
from harness.browser import browser_page
from harness.run_example import LOADERS as FAMILY_LOADERS, TINY_FAMILIES, TINY_LOADER, mini_family, runs_here
from harness.workflow import to_api

REPO = pathlib.Path(support.REPO)
EXAMPLES = sorted((REPO / "example_workflows").glob("*.json"))
LOADERS = {"CheckpointLoaderSimple", "UNETLoader", "DualCLIPLoader", "CLIPLoader", "VAELoader"}
OUT = os.path.join(os.environ.get("AE_TEST_OUTPUT", REPO / "out" / "tests"), "browser")
APP = "(window.comfyAPI?.app?.app ?? window.app)"
OUR_SCRIPT = "/extensions/attend-and-excite/"
PAGE_LIMIT_MS = 180_000


@pytest.fixture(scope="module")
def ui(server):
    # Full-detail rendering when the view is zoomed out (readable screenshots), and no
    # first-run templates dialog.
    for setting, value in (("LiteGraph.Canvas.MinFontSizeForLOD", 1), ("Comfy.TutorialCompleted", True),
                           ("Comfy.Minimap.Visible", False)):
        assert server.request(f"/settings/{setting}", value)[0] == 200
    with browser_page(OUT) as page:
        # Generous limits everywhere: a busy machine slows the frontend, not what it shows.
        page.page.set_default_timeout(PAGE_LIMIT_MS)
        page.page.goto(server.url)
        # Newer frontends throw from app.extensions until their stores are up: keep polling.
        page.page.wait_for_function(f"""() => {{ try {{ return {APP}.extensions.some(e => e.name ===
            'attend_excite.token_picker') && {APP}.canvas && {APP}.graph; }} catch {{ return false; }} }}""")
        page.page.wait_for_timeout(1000)
        page.screenshot("startup")
        yield page
        assert not page.blocked, f"the page tried to leave 127.0.0.1: {page.blocked}"


def our_errors(page) -> list[str]:
    """Uncaught page errors, and console errors raised from this package's scripts."""
    return [e for e in page.errors if e.startswith("page error") or OUR_SCRIPT in e]


def drop_workflow(page, path: pathlib.Path):
    """Drops the file on the canvas as a user dragging it in from the desktop."""
    page.page.evaluate("""([text, name]) => {
        const files = new DataTransfer();
        files.items.add(new File([text], name, {type: "application/json"}));
        document.querySelector("canvas").dispatchEvent(
            new DragEvent("drop", {dataTransfer: files, bubbles: true, cancelable: true}));
    }""", [path.read_text(), path.name])
    expected = len(json.loads(path.read_text())["nodes"])
    page.page.wait_for_function(f"(n) => {APP}.graph._nodes.length === n", arg=expected)


def fit_view(page):
    page.page.keyboard.press("Escape")
    page.page.mouse.click(page.page.viewport_size["width"] - 300, page.page.viewport_size["height"] - 20)
    page.page.keyboard.press(".")
    page.page.wait_for_timeout(500)


def graph_clip(page, margin: int = 16) -> dict:
    """The screen rectangle around every node (titles included), for a tight screenshot."""
    return page.page.evaluate(f"""(margin) => {{ const app = {APP}; const ds = app.canvas.ds;
        const box = app.canvas.canvas.getBoundingClientRect(); const title = window.LiteGraph.NODE_TITLE_HEIGHT;
        const xs = [], ys = [];
        for (const n of app.graph._nodes) {{
            xs.push(n.pos[0], n.pos[0] + n.size[0]); ys.push(n.pos[1] - title, n.pos[1] + n.size[1]); }}
        const left = Math.max(box.left, box.left + (Math.min(...xs) + ds.offset[0]) * ds.scale - margin);
        const top = Math.max(box.top, box.top + (Math.min(...ys) + ds.offset[1]) * ds.scale - margin);
        const right = Math.min(box.right, box.left + (Math.max(...xs) + ds.offset[0]) * ds.scale + margin);
        const bottom = Math.min(box.bottom, box.top + (Math.max(...ys) + ds.offset[1]) * ds.scale + margin);
        return {{x: left, y: top, width: right - left, height: bottom - top}}; }}""", margin)


def focus_node(page, node_id: int, scale: float = 1.2):
    page.page.evaluate(f"""([id, scale]) => {{ const app = {APP}; const node = app.graph.getNodeById(id);
        app.canvas.ds.scale = scale; app.canvas.ds.offset = [-node.pos[0] + 120, -node.pos[1] + 110];
        app.canvas.setDirty(true, true); }}""", [node_id, scale])
    page.page.wait_for_timeout(500)


def node_of(page, type_name: str) -> int:
    return page.page.evaluate(f"(t) => {APP}.graph._nodes.find(n => n.type === t).id", type_name)


def widget_values(page, node_id: int) -> dict:
    return page.page.evaluate(f"""(id) => Object.fromEntries({APP}.graph.getNodeById(id).widgets
        .map(w => [w.name, w.value]))""", node_id)


def chips(page) -> dict:
    """The token picker's words: text (pieces joined) -> (positions, chosen, automatic)."""
    return page.page.evaluate("""() => Object.fromEntries([...document.querySelectorAll(".ae-word")]
        .filter(c => c.offsetParent !== null)
        .map(c => [[...c.querySelectorAll(".ae-piece")].map(p => p.textContent).join("|"),
                   [c.dataset.positions, c.classList.contains("ae-chosen"), c.classList.contains("ae-auto")]]))""")


def served_text(ui, name: str) -> tuple[int, str]:
    """(status, text) of a file of the package's docs, fetched by the page."""
    return tuple(ui.page.evaluate("async (url) => { const r = await fetch(url); return [r.status, await r.text()]; }",
                                  f"{OUR_SCRIPT}docs/{name}"))


def test_extension_and_help_pages_load(ui):
    assert ui.page.evaluate(f"() => {APP}.extensions.filter(e => e.name.startsWith('attend_excite')).length") == 1
    for node_id in NODE_IDS:
        status, text = served_text(ui, f"{node_id}.md")
        assert status == 200 and text.startswith("# "), node_id
    # What the help pages link to and show, served beside them.
    status, text = served_text(ui, "troubleshooting.md")
    assert status == 200 and text.startswith("# Troubleshooting")
    for picture in ("heatmaps.jpg", "peak_plot.jpg", "overlay.jpg"):
        status, kind, size = ui.page.evaluate("""async (url) => { const r = await fetch(url);
            return [r.status, r.headers.get("content-type"), (await r.arrayBuffer()).byteLength]; }""",
                                              f"{OUR_SCRIPT}docs/{picture}")
        assert (status, kind) == (200, "image/jpeg") and size > 5000, picture
    assert our_errors(ui) == []


NODE_IDS = ("AttendExciteTextEncode", "AttendExciteKSampler", "AttendExciteSampler", "AttendExciteHeatmaps",
            "AttendExciteHeatmapOverlay", "AttendExciteAttentionBoost", "AttendExciteAttentionTemperature",
            "AttendExciteDemoModelLoader")


def open_help_panel(ui, node_type: str) -> dict:
    """Puts a node on an empty canvas, selects it and clicks the selection toolbox's info button,
    as a user asking for the node's help; what ComfyUI's help panel then shows."""
    ui.page.evaluate(f"""(type) => {{ const app = {APP}; app.graph.clear();
        const node = window.LiteGraph.createNode(type); node.pos = [0, 0]; app.graph.add(node);
        app.canvas.ds.scale = 1; app.canvas.ds.offset = [1000, 350];   // right of the sidebar the panel opens in
        app.canvas.deselectAll?.(); app.canvas.selectNode(node); app.canvas.setDirty(true, true); }}""", node_type)
    ui.page.locator('[data-testid="info-button"]').first.click()
    panel = ui.page.locator(".node-help-content").first
    panel.locator("h2").first.wait_for()
    ui.page.wait_for_function("""() => [...document.querySelectorAll('.node-help-content img')]
        .every(i => i.complete)""")
    return ui.page.evaluate("""() => { const panel = document.querySelector('.node-help-content');
        return {text: panel.innerText, headings: [...panel.querySelectorAll('h4')].map(h => h.textContent),
                images: [...panel.querySelectorAll('img')].map(i => [i.getAttribute('src'), i.naturalWidth]),
                links: [...panel.querySelectorAll('a')].map(a => [a.getAttribute('href'), a.target])}; }""")


def close_help_panel(ui):
    """Closes the panel the help opened in, as a user does (left open, its text lies over the canvas
    and takes the clicks of the tests after it): frontend 1.32 shows the help in the node library's
    sidebar tab (a click on the selected tab closes it), 1.49 in the properties panel on the right
    (its toggle button closes it)."""
    if not ui.page.locator(".node-help-content").count():
        return
    properties = ui.page.locator('button[aria-label="Toggle properties panel"][aria-pressed="true"]')
    (properties if properties.count() else ui.page.locator(".side-bar-button-selected")).first.click()
    ui.page.locator(".node-help-content").first.wait_for(state="detached")


@pytest.mark.parametrize("node_type", NODE_IDS)
def test_the_help_panel_shows_each_nodes_errors_and_pictures(ui, node_type):
    """The node's help in ComfyUI's own panel: its page, its "Errors and warnings" entries written
    in (each entry's message is there to read, no link to follow), its pictures loaded, and every
    link absolute (the panel opens links in a new tab as written: a relative one would miss)."""
    from harness.help_pages import entries
    known = {heading: text for heading, text in entries((REPO / "js" / "docs" / "troubleshooting.md")
                                                        .read_text(encoding="utf-8")).values()}
    try:
        shown = open_help_panel(ui, node_type)
        entry = ui.page.locator(".node-help-content h4").last
        entry.scroll_into_view_if_needed()
        ui.screenshot(f"help-panel-{node_type}")
    finally:
        close_help_panel(ui)
    page = (REPO / "js" / "docs" / f"{node_type}.md").read_text(encoding="utf-8")
    assert page.splitlines()[0][2:] in shown["text"]
    assert "Errors and warnings" in shown["text"] and shown["headings"]
    for heading in shown["headings"]:
        lines = known[heading].splitlines()        # the message, or the entry's first line where it has none
        message = next((line[2:] for line in lines if line.startswith("> ")), lines[0])
        assert " ".join(message.replace("`", "").replace("*", "").split()[:6]) in " ".join(shown["text"].split()), \
            heading
    for src, width in shown["images"]:
        assert src.startswith(OUR_SCRIPT + "docs/") and width > 0, src
    assert len(shown["images"]) == len(re.findall(r"!\[", page))
    for href, target in shown["links"]:
        assert href.startswith(("https://", "#")), href
    assert our_errors(ui) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_dropping_each_example_shows_every_node_without_errors(ui, object_info, path):
    drop_workflow(ui, path)
    fit_view(ui)
    ui.screenshot(f"example-{path.stem}", clip=graph_clip(ui))
    nodes = ui.page.evaluate(f"""() => {APP}.graph._nodes.map(n => ({{type: n.type, known:
        n.type in window.LiteGraph.registered_node_types, errors: !!n.has_errors}}))""")
    saved = json.loads(path.read_text())["nodes"]
    assert sorted(n["type"] for n in nodes) == sorted(n["type"] for n in saved)
    assert all(n["known"] for n in nodes), nodes
    # Newer frontends flag the loaders, whose model files are absent here on purpose.
    assert [n for n in nodes if n["errors"] and n["type"] not in LOADERS] == []
    for node in saved:           # every saved widget value landed in its widget and saves back unchanged
        values = ui.page.evaluate(f"(id) => {APP}.graph.getNodeById(id).serialize().widgets_values", node["id"])
        if node.get("widgets_values"):
            assert values == node["widgets_values"], node["type"]
    # The tests' converter gives the API prompt that the frontend itself exports (less the
    # values of frontend-only widgets, such as PreviewAny's display, which the server ignores).
    exported = ui.page.evaluate(f"async () => (await {APP}.graphToPrompt()).output")
    converted = to_api(json.loads(path.read_text()), object_info)

    def declared(node):
        spec = object_info[node["class_type"]]["input"]
        names = {**spec.get("required", {}), **spec.get("optional", {})}
        return node["class_type"], {k: v for k, v in node["inputs"].items() if k in names}
    assert {k: declared(v) for k, v in exported.items()} == {k: declared(v) for k, v in converted.items()}
    assert our_errors(ui) == []


def test_token_picker_follows_typing_and_clicks_write_subjects(ui):
    drop_workflow(ui, REPO / "example_workflows" / "attend_and_excite_sd15_custom_sampler.json")
    encoder = node_of(ui, "AttendExciteTextEncode")
    focus_node(ui, encoder)
    assert widget_values(ui, encoder)["subjects"] == ""
    ui.page.wait_for_function("() => [...document.querySelectorAll('.ae-word')]"
                              ".some(c => c.textContent.startsWith('crown'))")
    assert chips(ui)["crown"] == ["5", True, True]          # automatic subjects, marked as such

    editor = ui.page.evaluate_handle("""() => [...document.querySelectorAll("textarea")]
        .find(t => t.value === "a dog with a crown")""").as_element()
    editor.fill("")
    editor.type("a photo of a giraffe and a sombrero")
    ui.page.wait_for_function("() => [...document.querySelectorAll('.ae-word')]"
                              ".some(c => c.textContent.startsWith('giraffe'))")
    words = chips(ui)
    assert words["giraffe"] == ["5", True, True]
    sombrero = next(k for k in words if k.replace("|", "") == "sombrero")
    assert "|" in sombrero and words[sombrero][0] == "8+9" and words[sombrero][1]   # one chip, two pieces
    assert words["photo"][1] is False and words["a"][1] is False
    ui.screenshot("token-picker-typed")

    def click(word, chosen_after):
        """Clicks a word's chip and waits until the picker shows the word chosen or not."""
        ui.page.locator(".ae-word", has_text=word).first.click()
        ui.page.wait_for_function("""([word, chosen]) => [...document.querySelectorAll('.ae-word')].some(c =>
            c.offsetParent !== null && c.textContent.startsWith(word)
            && c.classList.contains('ae-chosen') === chosen)""",
                                  arg=[word, chosen_after])

    click("giraffe", False)
    assert widget_values(ui, encoder)["subjects"] == "sombrero"     # the automatic list, less the clicked word
    click("giraffe", True)
    click("sombrero", False)
    assert widget_values(ui, encoder)["subjects"] == "giraffe"
    ui.page.wait_for_function("() => document.querySelector('.ae-word.ae-chosen')?.textContent.startsWith('giraffe')")
    assert chips(ui)["giraffe"] == ["5", True, False]
    ui.screenshot("token-picker-clicked")

    prompt = ui.page.evaluate(f"async () => await {APP}.graphToPrompt()")
    assert prompt["output"][str(encoder)]["inputs"]["subjects"] == "giraffe"
    assert "token_picker" not in prompt["output"][str(encoder)]["inputs"]
    saved = ui.page.evaluate(f"(id) => {APP}.graph.getNodeById(id).serialize().widgets_values", encoder)
    assert saved == ["a photo of a giraffe and a sombrero", "giraffe"]
    assert our_errors(ui) == []


def test_token_picker_shows_the_modifier_pairs_the_binding_losses_read(ui):
    drop_workflow(ui, REPO / "example_workflows" / "attend_and_excite_sd15_syngen.json")
    focus_node(ui, node_of(ui, "AttendExciteTextEncode"))
    ui.page.wait_for_function("() => document.querySelector('.ae-tokens .ae-head')?.textContent"
                              ".includes('pairs: red→car, blue→bicycle')")
    modifiers = ui.page.evaluate("""() => [...document.querySelectorAll('.ae-word.ae-modifier')]
        .filter(c => c.offsetParent !== null).map(c => [c.dataset.positions, c.title])""")
    assert modifiers == [["2", "token position 2 · modifies car"], ["6", "token position 6 · modifies bicycle"]]
    assert our_errors(ui) == []


def test_token_picker_reads_t5_columns_when_the_clip_comes_from_a_flux_text_encoder(ui):
    drop_workflow(ui, REPO / "example_workflows" / "attend_and_excite_sd15_custom_sampler.json")
    encoder = node_of(ui, "AttendExciteTextEncode")
    focus_node(ui, encoder)
    ui.page.wait_for_function("() => document.querySelector('.ae-tokens .ae-head')"
                              "?.textContent.includes('CLIP tokens')")
    assert chips(ui)["crown"][0] == "5"
    ui.page.evaluate(f"""(id) => {{ const app = {APP}; const encoder = app.graph.getNodeById(id);
        const loader = window.LiteGraph.createNode("DualCLIPLoader"); app.graph.add(loader);
        loader.pos = [encoder.pos[0] - 400, encoder.pos[1]];
        loader.widgets.find(w => w.name === "type").value = "flux";
        loader.connect(0, encoder, encoder.inputs.findIndex(i => i.name === "clip")); }}""", encoder)
    ui.page.wait_for_function("() => document.querySelector('.ae-tokens .ae-head')?.textContent.includes('T5 tokens')")
    assert chips(ui)["crown"][0] == "6"            # "a dog with a crown" on T5: "▁" "a" "▁dog" "▁with" "▁" "a" "▁crown"
    ui.screenshot("token-picker-t5")
    assert our_errors(ui) == []


@pytest.mark.parametrize("template, shown", [
    ("attend_and_excite_zimage.json", "Qwen3 tokens"), ("attend_and_excite_qwen_image.json", "Qwen2.5-VL tokens"),
    ("attend_and_excite_flux2.json", "write the subjects as words")])
def test_token_picker_reads_the_llm_of_the_loader_a_family_template_uses(ui, template, shown):
    """Z-Image's CLIPLoader type (lumina2) gives Qwen3's words, counted after its chat template's 3 columns;
    Qwen-Image's (qwen_image) Qwen2.5-VL's from 0 (its encoder drops the template's head); Flux.2 dev's
    tokenizer lives in its text-encoder file, so the picker says what to do."""
    drop_workflow(ui, REPO / "example_workflows" / template)
    focus_node(ui, node_of(ui, "AttendExciteTextEncode"))
    ui.page.wait_for_function("(text) => document.querySelector('.ae-tokens')?.textContent.includes(text)",
                              arg=shown)
    words = chips(ui)
    if "qwen_image" in template:
        assert words["red"][0] == "1" and words["bicycle"][0] == "2"     # "a red bicycle, ..." from column 0
    elif "zimage" in template:
        assert words["cat"][0] == "4"           # "<|im_start|>", "user", "\n", then "a cat, ..."
    else:
        assert words == {}
    ui.screenshot(f"token-picker-{template[:-5]}")
    assert our_errors(ui) == []


# Per example: the node that shows the heatmaps, and every node whose run shows images.
PREVIEWS = {"attend_and_excite_sd15.json": ("AttendExciteKSampler", {
                "AttendExciteKSampler": 2, "AttendExciteHeatmapOverlay": 2, "PreviewImage": 1, "SaveImage": 1}),
            "attend_and_excite_sd15_custom_sampler.json": ("AttendExciteHeatmaps", {
                "AttendExciteHeatmaps": 2, "AttendExciteHeatmapOverlay": 2, "SaveImage": 1})}
for _name in ("sdxl", "sd35", "sd15_syngen"):
    PREVIEWS[f"attend_and_excite_{_name}.json"] = PREVIEWS["attend_and_excite_sd15.json"]
PREVIEWS["attend_and_excite_demo.json"] = ("AttendExciteKSampler", {     # four images
    "AttendExciteKSampler": 8, "AttendExciteHeatmapOverlay": 8, "PreviewImage": 4, "SaveImage": 4})
PREVIEWS["attend_and_excite_demo_joint.json"] = PREVIEWS["attend_and_excite_demo.json"]
PREVIEWS["attention_boost_demo.json"] = (None, {"SaveImage": 4})       # a patch: the stock KSampler shows no heatmaps
PREVIEWS["attend_and_excite_demo_masks.json"] = ("AttendExciteKSampler", {   # one image, two subjects: two masks
    "AttendExciteKSampler": 2, "PreviewImage": 2, "SaveImage": 1})
# The families' templates on their tiny models: three subjects (Chroma's two), one image.
for _name in ("zimage", "qwen_image"):
    PREVIEWS[f"attend_and_excite_{_name}.json"] = ("AttendExciteKSampler", {
        "AttendExciteKSampler": 3, "AttendExciteHeatmapOverlay": 3, "PreviewImage": 1, "SaveImage": 1})
PREVIEWS["attend_and_excite_chroma.json"] = PREVIEWS["attend_and_excite_sd15.json"]
PREVIEWS["attend_and_excite_flux2.json"] = ("AttendExciteHeatmaps", {
    "AttendExciteHeatmaps": 3, "AttendExciteHeatmapOverlay": 3, "SaveImage": 1})


def swap_in_the_tiny_model(page, family: str):
    """The template's loaders replaced, on the canvas, by the tests' loader of the family's tiny random
    model (its title says so, in the screenshots and thumbnails), wired where the loaders were."""
    page.page.evaluate(f"""([family, loaders, tiny, slots]) => {{ const graph = {APP}.graph;
        const found = graph._nodes.filter(n => loaders.includes(n.type));
        const node = window.LiteGraph.createNode(tiny);
        node.pos = [...found[0].pos];
        graph.add(node);
        node.widgets.find(w => w.name === "family").value = family;
        node.widgets.find(w => w.name === "type").value =
            found.find(n => n.type === "CLIPLoader").widgets.find(w => w.name === "type").value;
        for (const loader of found) for (const output of loader.outputs ?? [])
            for (const id of [...(output.links ?? [])]) {{ const link = graph.links[id] ?? graph.links.get?.(id);
                node.connect(slots[output.type], graph.getNodeById(link.target_id), link.target_slot); }}
        for (const loader of found) graph.remove(loader);
        for (const n of graph._nodes) n.aeRefreshTokens?.();     // the picker reads the new loader's type
        {APP}.canvas.setDirty(true, true); }}""",
        [family, list(FAMILY_LOADERS), TINY_LOADER, {"MODEL": 0, "CLIP": 1, "VAE": 2}])


@pytest.mark.parametrize("path", [p for p in EXAMPLES if runs_here(p)], ids=lambda p: p.name)
def test_queueing_the_example_shows_the_heatmaps_on_the_node(ui, server, mini_checkpoints, path):
    family = mini_family(path)
    if family in TINY_FAMILIES and tiny_families.missing(TINY_FAMILIES[family]):
        pytest.skip(tiny_families.missing(TINY_FAMILIES[family]))
    checkpoint = mini_checkpoints[1].get(family)
    shows_heatmaps, image_counts = PREVIEWS[path.name]
    drop_workflow(ui, path)
    if family in TINY_FAMILIES:
        swap_in_the_tiny_model(ui, TINY_FAMILIES[family])
        checkpoint = ""      # the short-run settings below apply
    # random-weight checkpoints: short runs; the demo model runs the workflow as it is (its thumbnail shows it)
    ui.page.evaluate(f"""(checkpoint) => {{ if (checkpoint !== null)
      for (const node of {APP}.graph._nodes) for (const w of node.widgets ?? []) {{
        if (w.name === "ckpt_name") w.value = checkpoint;
        if (w.name === "steps") w.value = 6;
        if (w.name === "max_refinement") w.value = 2;     // random weights never reach a threshold
        if (w.name === "width" || w.name === "height") w.value = 128;
    }} }}""", checkpoint)
    known = frozenset(server.finished())
    ui.page.get_by_role("button", name="Run", exact=True).first.click()    # the queue button
    # The run itself is followed through the server's history, as long as it takes; then the
    # page has its usual limit to show the images that the run's messages named.
    assert server.wait(known=known)["status"]["status_str"] == "success"
    # The frontend gives up on a preview whose download takes over twice its media load timeout
    # (8.2 s), as it can on a busy machine while the server still runs the rest of the graph. Once
    # the run is over, the previews it gave up on are loaded again by its own loader, which a node
    # runs when it is drawn with other images than it last loaded.
    ui.page.evaluate(f"""() => {{ for (const node of {APP}.graph._nodes)
            if (!node.imgs?.length) node.images = undefined;
        {APP}.canvas.setDirty(true, true); }}""")
    shown = f"""() => {APP}.graph._nodes.map(n => [n.type,
        (n.imgs ?? []).filter(i => i.complete && i.naturalWidth > 0).length])"""
    try:
        ui.page.wait_for_function(f"(counts) => ({shown})()"
                                  ".every(([type, n]) => !(type in counts) || n === counts[type])", arg=image_counts)
    except PlaywrightTimeout:
        ui.screenshot(f"timeout-{path.stem}")
        loaded = [pair for pair in ui.page.evaluate(shown) if pair[0] in image_counts]
        raise AssertionError(f"the run finished on the server, but {PAGE_LIMIT_MS // 1000} s later the page showed "
                             f"these images per node: {loaded}, not {image_counts}") from None
    if shows_heatmaps is None:
        fit_view(ui)
        ui.screenshot(f"after-run-{path.stem}", clip=graph_clip(ui))
        return
    heatmaps = node_of(ui, shows_heatmaps)
    previews = ui.page.evaluate(f"""(id) => {APP}.graph.getNodeById(id).imgs.map(i =>
        [new URL(i.src).searchParams.get("type"), i.naturalWidth, i.naturalHeight])""", heatmaps)
    assert previews == [["temp", 128, 128]] * image_counts[shows_heatmaps]     # a tile per subject and image
    fit_view(ui)
    ui.screenshot(f"after-run-{path.stem}", clip=graph_clip(ui))
    focus_node(ui, heatmaps, scale=1.0)
    ui.screenshot(f"heatmaps-on-node-{path.stem}")
    assert our_errors(ui) == []
