# The README's two commands. Each sets everything up from nothing (a .venv beside this file):
#   make demo   -- the main job on the embedded default
#   make test   -- the whole test suite
# A machine whose python3 already has a CUDA build of torch keeps it (the venv sees the system
# site-packages); elsewhere torch comes from TORCH_SPEC (the CPU build on these machines).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
# k-diffusion: the peer of the sigma-view samplers' tests, without its training/evaluation deps
# (wandb, clean-fid, CLIP, torchvision...): its samplers need only these (tests/samplers/kdiffusion.py)
TEST_NODEPS := k-diffusion torchsde torchdiffeq trampoline
DEPS := triton numpy tqdm pytest matplotlib Pillow pyyaml diffusers scikit-learn safetensors pybind11 ninja cmake "setuptools>=77" wheel "import-linter>=2.17"

.PHONY: demo test build clean

# (re-run when this file changes, so a venv made before a new entry of DEPS gets it)
$(VENV)/.stamp-deps: Makefile
	@if $(PYTHON) -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then \
		echo "using the CUDA torch of $(PYTHON)"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q "$(TORCH_SPEC)"; \
	fi
	$(BIN)/pip install -q $(DEPS)
	$(BIN)/pip install -q --no-deps $(TEST_NODEPS)
	touch $@

build: $(VENV)/.stamp-deps
	$(BIN)/pip install -q --no-build-isolation --no-deps -e .

demo: build
	$(BIN)/pydiffuse demo

test: build
	$(BIN)/python -m pytest -q

clean:
	rm -rf build $(VENV) pydiffuse/_C*.so
