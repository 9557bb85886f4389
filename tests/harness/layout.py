"""The templates laid out so that no node covers another, on the classic canvas and in Nodes 2.0 (the
frontend's Vue nodes, taller than the canvas's): each node's box is measured in both modes on the newest
frontend, and every node that overlaps one above it is moved down below it, its x kept.

    bash tests/harness/comfy_env.sh python tests/harness/layout.py     (after make frontend-newest)
"""
import json
import os
import pathlib
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from harness.browser import browser_page  # noqa: E402
from harness.server import REPO, running_server  # noqa: E402

APP = "(window.comfyAPI?.app?.app ?? window.app)"
TEMPLATES = sorted(pathlib.Path(REPO, "example_workflows").glob("*.json"))
GAP = 30            # graph units between a moved node and the one above it
NODES_2 = "Comfy.VueNodes.Enabled"
# Each node's box in graph units, title included: the Vue node's element where Nodes 2.0 draws one, the
# canvas's bounding box otherwise.
NODE_BOXES = f"""(ids) => {{
    const app = {APP}; const ds = app.canvas.ds; const canvas = app.canvas.canvas.getBoundingClientRect();
    const boxes = {{}};
    for (const node of ids.map(id => app.graph.getNodeById(id))) {{
        const element = document.querySelector(`[data-node-id="${{node.id}}"]`);
        if (element) {{
            const r = element.getBoundingClientRect();
            const [x, y] = ds.convertCanvasToOffset([r.left - canvas.left, r.top - canvas.top]);
            boxes[node.id] = [x, y, r.width / ds.scale, r.height / ds.scale];
        }} else {{
            const b = node.getBounding(); boxes[node.id] = [b[0], b[1], b[2], b[3]];
        }}
    }}
    return boxes;
}}"""


def newest_frontend() -> str:
    """The static files of the newest frontend on PyPI, as `make frontend-newest` installs them."""
    root = pathlib.Path(os.environ.get("AE_ENV_DIR", pathlib.Path(REPO, ".comfy")), "frontend-newest",
                        "comfyui_frontend_package", "static")
    if not (root / "index.html").is_file():
        raise RuntimeError(f"no frontend at {root}: run 'make frontend-newest' (make test does)")
    return str(root)


def set_mode(server, page, nodes_2: bool):
    """The page reloaded in the mode; no workflow restored from an earlier page (it would replace ours)."""
    for setting, value in ((NODES_2, nodes_2), ("Comfy.Workflow.Persist", False), ("Comfy.TutorialCompleted", True)):
        assert server.request(f"/settings/{setting}", value)[0] == 200
    page.page.goto(server.url)
    # Up once the frontend has put its default workflow on the canvas: a graph loaded earlier is replaced.
    page.page.wait_for_function(f"() => {{ try {{ return {APP}.canvas?.canvas && {APP}.graph._nodes.length &&"
                                f" {APP}.extensions.length; }} catch {{ return false; }} }}")


def boxes_of(page, workflow: dict) -> dict[str, list[float]]:
    """node id -> [x, y, width, height] of each node of the workflow as this page shows it."""
    ids = [node["id"] for node in workflow["nodes"]]
    ready = f"(ids) => {APP}.canvas?.canvas && ids.every(id => {APP}.graph.getNodeById(id)?.type)"
    page.page.wait_for_function(f"() => {APP}.canvas?.canvas")
    page.page.evaluate(f"async (graph) => {{ await {APP}.loadGraphData(graph); }}", workflow)
    page.page.wait_for_function(ready, arg=ids)
    page.page.wait_for_timeout(1500)       # the Vue nodes lay themselves out after the graph loads
    return {str(k): v for k, v in page.page.evaluate(NODE_BOXES, ids).items()}


def overlaps(boxes: dict[str, list[float]], tolerance: float = 1.0) -> list[tuple[str, str]]:
    """The pairs of nodes whose boxes intersect by more than `tolerance` in both directions."""
    found, items = [], sorted(boxes.items())
    for i, (a, (ax, ay, aw, ah)) in enumerate(items):
        for b, (bx, by, bw, bh) in items[i + 1:]:
            if min(ax + aw, bx + bw) - max(ax, bx) > tolerance and min(ay + ah, by + bh) - max(ay, by) > tolerance:
                found.append((a, b))
    return found


def laid_out(workflow: dict, measured: list[dict[str, list[float]]]) -> dict:
    """The workflow with each node moved down, top to bottom, until it covers none placed before it, in
    the union of its boxes over the modes measured."""
    union = {}
    for node in workflow["nodes"]:
        key = str(node["id"])
        boxes = [m[key] for m in measured]
        left, top = min(b[0] for b in boxes), min(b[1] for b in boxes)
        union[key] = [left, top, max(b[0] + b[2] for b in boxes) - left, max(b[1] + b[3] for b in boxes) - top]
    placed, moved = {}, dict(workflow, nodes=[dict(n) for n in workflow["nodes"]])
    for node in sorted(moved["nodes"], key=lambda n: (union[str(n["id"])][1], union[str(n["id"])][0])):
        x, y, w, h = union[str(node["id"])]
        shift = 0.0
        while True:
            box = [x, y + shift, w, h]
            below = [p[1] + p[3] + GAP for p in placed.values() if overlaps({"a": box, "b": p}, 0.0)]
            if not below:
                break
            shift = max(below) - y
        placed[str(node["id"])] = [x, y + shift, w, h]
        node["pos"] = [node["pos"][0], round(node["pos"][1] + shift)]
    return moved


def main():
    with tempfile.TemporaryDirectory() as base, \
            running_server(base, os.environ["COMFYUI_DIR"], front_end_root=newest_frontend()) as server, \
            browser_page(os.path.join(REPO, "out", "layout")) as page:
        page.page.set_default_timeout(180_000)
        measured = {path: [] for path in TEMPLATES}
        for nodes_2 in (False, True):
            set_mode(server, page, nodes_2)
            for path in TEMPLATES:
                measured[path].append(boxes_of(page, json.loads(path.read_text())))
        for path in TEMPLATES:
            workflow = json.loads(path.read_text())
            new = laid_out(workflow, measured[path])
            if new != workflow:
                second = path.read_text().splitlines()[1]
                path.write_text(json.dumps(new, indent=len(second) - len(second.lstrip())) + "\n")
                print(f"laid out {path.name}")


if __name__ == "__main__":
    main()
