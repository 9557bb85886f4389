# The two entry points of the README. Both build the test environment once
# (a venv with ComfyUI 0.3.75, or the tree in COMFYUI_DIR) under .comfy/.
.PHONY: example test lint frontend-newest test-core thumbnails benchmark gpu-check demo-model demo-model-joint fidelity fidelity-joint help-pages

example:
	bash tests/harness/comfy_env.sh python tests/harness/run_example.py $(if $(CHECKPOINT),--checkpoint "$(CHECKPOINT)")

test: lint
	$(MAKE) --no-print-directory frontend-newest
	bash tests/harness/comfy_env.sh python -m pytest -q -p no:cacheprovider

# ruff with the rules in pyproject.toml (the Registry's checks, pyflakes, whitespace, line length).
lint:
	bash tests/harness/comfy_env.sh python -m ruff check --no-cache .

# The newest frontend on PyPI beside the one the ComfyUI tree pins, for the Nodes 2.0 browser test and
# tests/harness/layout.py; installed once into the environments' folder.
FRONTEND_NEWEST = comfyui-frontend-package==1.58.1
frontend-newest:
	bash tests/harness/comfy_env.sh sh -c 'd="$${AE_ENV_DIR:-.comfy}/frontend-newest"; \
	  [ -f "$$d/$(FRONTEND_NEWEST).installed" ] || { rm -rf "$$d" && \
	  python -m pip install -q --no-deps --target "$$d" "$(FRONTEND_NEWEST)" && touch "$$d/$(FRONTEND_NEWEST).installed"; }'

# The pure-torch core's tests alone (tests/core): seconds, in a venv with torch and no ComfyUI.
test-core:
	bash tests/harness/comfy_env.sh --core python -m pytest -q -p no:cacheprovider tests/core

# Template thumbnails and the README screenshot, from a real-browser run of the examples.
thumbnails:
	bash tests/harness/comfy_env.sh python -m pytest -q -p no:cacheprovider tests/comfyui/test_browser.py
	bash tests/harness/comfy_env.sh python tests/harness/thumbnails.py

# Plain KSampler against Attend-and-Excite: time, ratio, peak memory, per-part profile (see the README).
benchmark:
	bash tests/harness/comfy_env.sh python tests/harness/benchmark.py

# On a lent GPU: tests/gpu, then the fast and lean passes' time and peak memory over plain sampling (SD1.5, SDXL).
gpu-check:
	bash tests/harness/comfy_env.sh python tests/harness/gpu_check.py

# The demo model's weights (nodes/demo/), trained again from their fixed seed, and the
# grounding of its words and the fidelity benchmark on them (see the README).
demo-model:
	bash tests/harness/comfy_env.sh python tests/harness/train_demo.py

fidelity:
	bash tests/harness/comfy_env.sh python tests/harness/grounding.py
	bash tests/harness/comfy_env.sh python tests/harness/fidelity.py

# The joint-attention demo model (ComfyUI's Flux class at a tiny width, on the UNet demo's autoencoder),
# trained again from its fixed seed (about 2 hours on one CPU core), and its fidelity benchmark.
demo-model-joint:
	bash tests/harness/comfy_env.sh python tests/harness/train_demo.py --architecture joint --vae-from nodes/demo/attend_excite_shapes.safetensors --work out/demo_training_joint

fidelity-joint:
	bash tests/harness/comfy_env.sh python tests/harness/fidelity.py --weights nodes/demo/attend_excite_shapes_joint.safetensors --out out/fidelity_joint

# The "Errors and warnings" entries of every help page, written from js/docs/troubleshooting.md.
help-pages:
	bash tests/harness/comfy_env.sh --core python tests/harness/help_pages.py
