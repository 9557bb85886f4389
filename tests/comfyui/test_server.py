"""The package inside a real ComfyUI server (main.py --cpu on loopback)."""
import glob
import json
import os
import socket
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tiny_families
from harness.run_example import EMPTY_LATENTS, EXAMPLE, TINY_FAMILIES, example_prompt, mini_family, runs_here
from harness.workflow import to_api

NODE_IDS = ("AttendExciteTextEncode", "AttendExciteKSampler", "AttendExciteSampler", "AttendExciteHeatmaps",
            "AttendExciteHeatmapOverlay", "AttendExciteAttentionBoost", "AttendExciteAttentionTemperature",
            "AttendExciteDemoModelLoader")
SHOWS_A_TILE_PER_SUBJECT = ("AttendExciteKSampler", "AttendExciteHeatmaps", "AttendExciteHeatmapOverlay")
EXAMPLES = sorted(glob.glob(os.path.join(os.path.dirname(EXAMPLE), "*.json")))


def test_package_imports_and_lists_its_nodes(server, object_info):
    log = server.log()
    assert "attend-and-excite" in log and "IMPORT FAILED" not in "\n".join(
        line for line in log.splitlines() if "attend" in line.lower())
    for node_id in NODE_IDS:
        info = object_info[node_id]
        assert info["category"] == "sampling/attend_and_excite" and info["python_module"].startswith("custom_nodes.")
    assert object_info["AttendExciteKSampler"]["output"] == ["LATENT", "IMAGE", "IMAGE", "AE_ATTENTION", "STRING",
                                                             "MASK"]
    assert object_info["AttendExciteHeatmaps"]["output"] == ["IMAGE", "IMAGE", "STRING", "MASK"]
    assert object_info["AttendExciteSampler"]["output"] == ["SAMPLER", "AE_ATTENTION"]
    assert object_info["AttendExciteDemoModelLoader"]["output"] == ["MODEL", "CLIP", "VAE"]
    assert object_info["AttendExciteHeatmaps"]["output_node"]
    assert object_info["AttendExciteHeatmapOverlay"]["output_node"]


def test_examples_are_listed_as_templates_with_thumbnails(server):
    status, templates = server.request("/api/workflow_templates")
    assert status == 200
    names = sorted(os.path.splitext(os.path.basename(p))[0] for p in EXAMPLES)
    assert sorted(templates["attend-and-excite"]) == names and len(names) == 14
    for path in EXAMPLES:
        assert os.path.getsize(path[:-len(".json")] + ".jpg") > 10_000, path


def upstream(prompt: dict, node_id: str) -> set:
    """The API prompt's nodes whose outputs reach node_id."""
    found, todo = set(), [node_id]
    while todo:
        for value in prompt[todo.pop()]["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and value[0] in prompt and value[0] not in found:
                found.add(value[0])
                todo.append(value[0])
    return found


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_workflow_converts_and_validates(server, object_info, path):
    with open(path) as f:
        prompt = to_api(json.load(f), object_info)
    assert "Note" not in [node["class_type"] for node in prompt.values()]
    guided = next((node for node in prompt.values() if "thresholds" in node["inputs"]), None)
    if guided is None:           # the attention boost's example: a patch and the stock KSampler, on the demo model
        status, answer = server.request("/prompt", {"prompt": prompt})
        assert status == 200 and mini_family(path) == "demo", answer
        ran = server.wait(answer["prompt_id"])["outputs"]
        assert sorted(prompt[n]["inputs"].get("filename_prefix") for n in ran) == ["demo_boost", "demo_plain"]
        return
    guided_id = next(node_id for node_id, node in prompt.items() if node is guided)
    guided["inputs"]["thresholds"] = "0=1"
    # another example may have just run the same plain branch: ComfyUI would answer it from its cache
    server.request("/free", {"free_memory": True})
    status, answer = server.request("/prompt", {"prompt": prompt})
    errors = json.dumps(answer["node_errors"])
    assert "cannot read '0=1'" in errors                  # our validation, at queue time
    unguided = sorted(node["inputs"]["filename_prefix"] for node_id, node in prompt.items()
                      if node["class_type"] == "SaveImage" and guided_id not in upstream(prompt, node_id))
    if mini_family(path) == "demo" and unguided:
        # the demo model ships with the package: ComfyUI queues the outputs that validated, those that do not
        # hang on the guided sampler
        assert status == 200 and "ckpt_name" not in errors
        ran = server.wait(answer["prompt_id"])["outputs"]
        assert sorted(prompt[n]["inputs"].get("filename_prefix") for n in ran) == unguided
    elif mini_family(path) == "demo":           # every output hangs on the guided sampler: nothing is queued
        assert status == 400 and "ckpt_name" not in errors
    else:
        users_checkpoint = {"sd15": "v1-5-pruned-emaonly.safetensors", "sdxl": "sd_xl_base_1.0.safetensors",
                            "sd3": "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors",
                            "flux": "flux1-dev.safetensors", "zimage": "z_image_turbo_bf16.safetensors",
                            "qwen_image": "qwen_image_fp8_e4m3fn.safetensors",
                            "flux2": "flux2_dev_fp8mixed.safetensors", "chroma": "Chroma1-HD.safetensors"}
        assert status == 400 and users_checkpoint[mini_family(path)] in errors   # absent here


@pytest.mark.parametrize("name, value, message", [("max_refinement", -1, "smaller than min of 0"),
                                                  ("scale_factor", 1e9, "bigger than max of 1000"),
                                                  ("smoothing_kernel", 0, "smaller than min of 1")])
def test_out_of_range_numbers_are_stopped_at_queue_time(server, object_info, name, value, message):
    with open(EXAMPLE) as f:
        prompt = to_api(json.load(f), object_info)
    guided = next(node for node in prompt.values() if node["class_type"] == "AttendExciteKSampler")
    guided["inputs"][name] = value
    status, answer = server.request("/prompt", {"prompt": prompt})
    assert status == 400 and message in json.dumps(answer["node_errors"])


@pytest.mark.parametrize("path", [p for p in EXAMPLES if runs_here(p)], ids=os.path.basename)
def test_example_workflow_runs_end_to_end(server, object_info, mini_checkpoints, path):
    """On the mini checkpoints, the demo model, or (the families behind an LLM text encoder, and Chroma) a
    tiny random model of the family in the loaders' place."""
    _, checkpoints = mini_checkpoints
    family = mini_family(path)
    if family in TINY_FAMILIES and tiny_families.missing(TINY_FAMILIES[family]):
        pytest.skip(tiny_families.missing(TINY_FAMILIES[family]))
    # random weights never reach a threshold: cap refinement to keep the run short
    prompt = example_prompt(object_info, checkpoints.get(family), steps=6, size=128, path=path, max_refinement=2)
    batch = next(n["inputs"]["batch_size"] for n in prompt.values() if n["class_type"] in EMPTY_LATENTS)
    result = server.run_prompt(prompt)
    assert result["status"]["status_str"] == "success", result["status"]
    logs = [json.loads(o["text"][0]) for o in result["outputs"].values() if "text" in o]
    subjects = len(logs[0]["subjects"]) if logs else 2      # the prompts of the examples without a log: two
    for node_id, node in prompt.items():
        images = result["outputs"].get(node_id, {}).get("images", [])
        if node["class_type"] in ("SaveImage", "PreviewImage"):
            assert len(images) == batch * (subjects if per_subject(prompt, object_info, node_id) else 1), node
        if node["class_type"] in SHOWS_A_TILE_PER_SUBJECT:
            assert len(images) == subjects * batch and {i["type"] for i in images} == {"temp"}, node
    assert len(logs) == sum(node["class_type"] == "PreviewAny" for node in prompt.values())
    for log in logs:
        assert len(log["subjects"]) == subjects and [s["step"] for s in log["steps"]] == [0, 1, 2]
        assert all(s["refinement_iterations"][0] <= 2 for s in log["steps"])     # the cap applies
        demo = "Flux.1 demo (shapes)" if "joint" in os.path.basename(path) else "SD1.x demo (shapes)"
        assert log["model"] == {"sd15": "SD1.x", "sdxl": "SDXL", "sd3": "SD3", "demo": demo,
                                "zimage": "Z-Image", "qwen_image": "Qwen-Image", "flux2": "Flux.2",
                                "chroma": "Chroma"}[family]


def per_subject(prompt: dict, object_info: dict, node_id: str) -> bool:
    """Whether an image node shows a picture per image and subject: it shows a pack node's
    heatmaps or masks (through Convert Mask to Image)."""
    source, slot = prompt[node_id]["inputs"]["images"]
    if prompt[source]["class_type"] == "MaskToImage":
        source, slot = prompt[source]["inputs"]["mask"]
    names = object_info[prompt[source]["class_type"]]["output_name"]
    return prompt[source]["class_type"] in SHOWS_A_TILE_PER_SUBJECT and names[slot] in ("heatmaps", "masks")


def node_of(prompt: dict, class_type: str) -> str:
    return next(node_id for node_id, node in prompt.items() if node["class_type"] == class_type)


def test_guided_and_plain_samplers_on_one_model_do_not_affect_each_other_in_either_order(server, object_info,
                                                                                       mini_checkpoints):
    """The example graph (Attend-and-Excite and a plain KSampler on one loaded model), each order forced by
    feeding the second sampler an empty latent sized from the first one's image."""
    from safetensors.torch import load_file
    base, checkpoints = mini_checkpoints
    fresh = "mini_sd15_isolation.safetensors"    # a model object that nothing has sampled with before
    link = base / "models" / "checkpoints" / fresh
    if not link.exists():
        link.symlink_to(base / "models" / "checkpoints" / checkpoints["sd15"])
    example = example_prompt(object_info, fresh, steps=4, size=64, max_refinement=2)
    guided, plain = node_of(example, "AttendExciteKSampler"), node_of(example, "KSampler")
    decoded = {example[n]["inputs"]["samples"][0]: n for n in example if example[n]["class_type"] == "VAEDecode"}
    latents = {}
    for first, second in ((plain, guided), (guided, plain)):
        prompt = json.loads(json.dumps(example))
        prompt["size"] = {"class_type": "GetImageSize", "inputs": {"image": [decoded[first], 0]}}
        prompt["empty"] = {"class_type": "EmptyLatentImage",
                           "inputs": {"width": ["size", 0], "height": ["size", 1], "batch_size": 1}}
        prompt[second]["inputs"]["latent_image"] = ["empty", 0]
        for name, sampler in (("guided", guided), ("plain", plain)):
            prompt["save_" + name] = {"class_type": "SaveLatent",
                                      "inputs": {"samples": [sampler, 0], "filename_prefix": "isolation_" + name}}
        result = server.run_prompt(prompt)
        assert result["status"]["status_str"] == "success", result["status"]
        for name in ("guided", "plain"):
            saved = result["outputs"]["save_" + name]["latents"][0]
            path = base / "output" / saved["subfolder"] / saved["filename"]
            latents[first, name] = load_file(str(path))["latent_tensor"]
    assert latents[plain, "plain"].shape == (1, 4, 8, 8)
    for name in ("guided", "plain"):
        assert torch.equal(latents[plain, name], latents[guided, name]), name
    assert not torch.equal(latents[plain, "guided"], latents[plain, "plain"])


def test_sampler_node_with_sampler_custom_advanced(server, mini_checkpoints):
    checkpoint = mini_checkpoints[1]["sd15"]
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "AttendExciteTextEncode", "inputs": {"clip": ["1", 1], "text": "a cat with a crown",
                                                                 "subjects": ""}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 2}},
        "5": {"class_type": "AttendExciteSampler", "inputs": {
            "sampler_name": "dpmpp_2m", "steps_to_alter": 25, "thresholds": "0:1.0", "max_refinement": 2,
            "scale_factor": 20.0, "scale_start": 1.0, "scale_end": 0.5, "smoothing_kernel": 3,
            "smoothing_sigma": 0.5, "schedule_steps": 50}},
        "6": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                    "cfg": 7.5}},
        "7": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "karras", "steps": 6,
                                                         "denoise": 1.0}},
        "8": {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}},
        "9": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["8", 0], "guider": ["6", 0],
                                                                "sampler": ["5", 0], "sigmas": ["7", 0],
                                                                "latent_image": ["4", 0]}},
        "10": {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": "ae"}},
    }
    result = server.run_prompt(prompt)
    assert result["status"]["status_str"] == "success", result["status"]
    assert "Attend-and-Excite subjects (automatic): cat [2], crown [5]" in server.log()


def test_tokenize_route(server):
    status, answer = server.request("/attend_excite/tokenize", {"text": "a (cat:1.2) and a sombrero"})
    assert status == 200
    by_position = {t["position"]: t["text"] for t in answer["tokens"] if t["kind"] == "piece"}
    assert by_position[2] == "cat" and answer["tokens"][0]["kind"] == "start"
    sombrero = next(w for w in answer["words"] if w["text"] == "sombrero")
    assert len(sombrero["positions"]) > 1
    assert [s["text"] for s in answer["automatic"]] == ["cat", "sombrero"] == [s["text"] for s in answer["chosen"]]
    assert answer["error"] is None


def test_tokenize_route_reads_t5_columns_for_flux(server):
    status, answer = server.request("/attend_excite/tokenize", {"text": "a cat and a hedgehog", "encoder": "t5"})
    assert status == 200 and answer["encoder"] == "t5"
    assert answer["automatic"] == [{"text": "cat", "positions": [2], "modifiers": []},
                                   {"text": "hedgehog", "positions": [6, 7], "modifiers": []}]
    assert answer["tokens"][0] == {"position": 0, "text": "", "kind": "piece"}      # no start token: "▁" "a"
    _, clip = server.request("/attend_excite/tokenize", {"text": "a cat and a hedgehog", "encoder": "clip"})
    assert clip["encoder"] == "clip" and clip["automatic"][0] == {"text": "cat", "positions": [2], "modifiers": []}
    assert clip["tokens"][0]["kind"] == "start"


@pytest.mark.parametrize("encoder, first", [("qwen3", 3), ("qwen25_vl", 0)])
def test_tokenize_route_lists_the_words_of_an_llm_prompt_in_the_columns_the_model_receives(server, encoder, first):
    """Z-Image's Qwen3 keeps its chat template (3 columns before the prompt); Qwen-Image's encoder drops it."""
    status, answer = server.request("/attend_excite/tokenize", {"text": "a red cat and a frog", "encoder": encoder})
    assert status == 200 and answer["error"] is None
    assert [(w["text"], w["positions"]) for w in answer["words"]] == [
        (word, [first + n]) for n, word in enumerate("a red cat and a frog".split())]
    assert answer["chosen"][0] == {"text": "cat", "positions": [first + 2],
                                   "modifiers": [{"text": "red", "positions": [first + 1]}]}
    assert all(t["kind"] == "template" for t in answer["tokens"] if t["position"] < first)


def test_tokenize_route_says_what_to_do_where_the_tokenizer_is_in_the_model_file(server):
    status, answer = server.request("/attend_excite/tokenize", {"text": "a cat and a frog", "encoder": "mistral"})
    assert status == 200 and answer["words"] == [] and "write the subjects as words" in answer["error"]


def test_tokenize_route_resolves_the_subjects_field_as_the_node_does(server):
    _, answer = server.request("/attend_excite/tokenize", {"text": "a cat and a frog", "subjects": "frog, 2"})
    assert answer["chosen"] == [{"text": "frog", "positions": [5], "modifiers": []},
                                {"text": "cat", "positions": [2], "modifiers": []}]
    _, answer = server.request("/attend_excite/tokenize", {"text": "a red cat and a frog", "subjects": ""})
    assert answer["chosen"][0] == {"text": "cat", "positions": [3], "modifiers": [{"text": "red", "positions": [2]}]}
    _, answer = server.request("/attend_excite/tokenize", {"text": "a cat and a frog", "subjects": "dog"})
    assert answer["chosen"] == [] and "'dog' is not a word of the prompt" in answer["error"]


@pytest.mark.parametrize("body, status", [(b"{not json", 400), (b'{"text": 5}', 400), (b"{}", 400), (b"[1]", 400),
                                          (b'{"text": "a", "subjects": 3}', 400),
                                          (b'{"text": "a", "encoder": "g"}', 400),
                                          (b'{"text": "' + b"a" * 70000 + b'"}', 413)])
def test_tokenize_route_rejects_bad_bodies(server, body, status):
    import urllib.error
    import urllib.request
    request = urllib.request.Request(server.url + "/attend_excite/tokenize", data=body)
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=30)
    assert error.value.code == status


def slow_post(server, path: str, pieces: list[bytes], chunked: bool, pause: float = 0.05) -> tuple[int, bytes]:
    """(status, answer) of a POST whose body leaves in pieces with pauses between them, as from a
    slow client: the server sees it arrive in several reads."""
    host, port = server.url.removeprefix("http://").split(":")
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {sum(map(len, pieces))}"
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        connection.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                           f"Content-Type: application/json\r\n{framing}\r\n\r\n".encode())
        try:
            for piece in pieces:
                time.sleep(pause)
                connection.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            connection.sendall(b"0\r\n\r\n" if chunked else b"")
        except (BrokenPipeError, ConnectionResetError):
            pass          # the server may refuse an oversized body before all of it is sent
        response = connection.makefile("rb").read()
    head, _, answer = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), answer


def in_pieces(data: bytes, count: int) -> list[bytes]:
    size = -(-len(data) // count)
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_tokenize_route_reads_a_body_that_arrives_in_pieces(server, chunked):
    """A valid body in six slow pieces is read whole; an oversized one is refused as too large,
    however it arrives. Each is sent five times, so that a read racing the network would show."""
    valid = json.dumps({"text": "a cat and a frog, " * 150, "subjects": "cat, frog"}).encode()
    oversized = json.dumps({"text": "a" * 70_000}).encode()
    for _ in range(5):
        status, answer = slow_post(server, "/attend_excite/tokenize", in_pieces(valid, 6), chunked)
        assert status == 200, answer[:300]
        assert [s["text"] for s in json.loads(answer)["chosen"]] == ["cat", "frog"]
        status, answer = slow_post(server, "/attend_excite/tokenize", in_pieces(oversized, 7), chunked)
        assert status == 413, answer[:300]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(
    st.binary(max_size=600),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
                 lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                 max_leaves=12).map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries({"text": st.text(max_size=300)},
                          optional={"subjects": st.text(max_size=40) | st.integers() | st.none()})
    .map(lambda value: json.dumps(value).encode())))
def test_tokenize_route_never_fails_on_any_body(server, body):
    started = time.monotonic()
    status, answer = server.request("/attend_excite/tokenize", body)
    assert status in (200, 400), answer
    assert time.monotonic() - started < 5


def test_tokenize_route_answers_long_prompts_in_bounded_time(server):
    started = time.monotonic()
    status, answer = server.request("/attend_excite/tokenize", {"text": "a red cat and a frog, " * 2900})
    assert status == 200 and len(answer["tokens"]) > 10_000
    assert time.monotonic() - started < 10
