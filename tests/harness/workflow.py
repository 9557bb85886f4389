"""UI-format workflows (what ComfyUI's editor saves) to the API format that /prompt
takes, driven by the server's /object_info, as the frontend's graphToPrompt does for
the simple graphs of our examples."""

FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
MUTED, BYPASSED = 2, 4


def _spec(info: dict, name: str):
    inputs = info["input"]
    return inputs.get("required", {}).get(name) or inputs.get("optional", {}).get(name)


def _is_widget(spec) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def to_api(workflow: dict, object_info: dict) -> dict:
    links = {link[0]: link for link in workflow["links"]}
    api = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode") == MUTED:
            continue
        if node.get("mode") == BYPASSED:
            raise ValueError(f"node {node['id']} is bypassed; the converter does not rewire bypassed nodes")
        info = object_info.get(node["type"])
        if info is None:
            raise ValueError(f"node type {node['type']!r} is not installed on this server")
        inputs = {}
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                link = links[socket["link"]]
                inputs[socket["name"]] = [str(link[1]), link[2]]
        values = list(node.get("widgets_values") or [])
        order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
        for name in order:
            spec = _spec(info, name)
            if not _is_widget(spec) or not values:
                continue
            value = values.pop(0)
            options = spec[1] if len(spec) > 1 else {}
            if options.get("control_after_generate") and values and values[0] in ("fixed", "increment",
                                                                                  "decrement", "randomize"):
                values.pop(0)
            inputs.setdefault(name, value)
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                "_meta": {"title": node.get("title", node["type"])}}
    return api
