# The two commands of README.md: `make demo` (main job) and `make test`.
# TDE_DET_VENV chooses the virtual environment (default .venv), e.g. for a second one in CI.
VENV := $(or $(TDE_DET_VENV),.venv)
PY := $(VENV)/bin/python

.PHONY: env demo test clean-env

env:  ## create/update $(VENV) with the pinned environment (idempotent; see scripts/setup_env.sh)
	bash scripts/setup_env.sh

demo: env  ## train + evaluate De-confound-TDE on the embedded long-tailed demo set (CPU)
	$(PY) tools/train_net.py --config-file configs/demo/tde_mask_rcnn_demo.yaml

test: env  ## run the test suite
	$(PY) -m pytest tests -q

# Peer suite (issue 12): Detectron2's own ROI-head / end-to-end tests of the installed detectron2's
# version, from the vendored archive, with the TDE heads swapped in (see scripts/peer_test.py).
# CI: `make peer-test` after `make test` in each leg, with that leg's TDE_DET_VENV / TDE_DET_DETECTRON2_SRC.
.PHONY: peer-test
peer-test: env  ## Detectron2's tests/modeling/test_roi_heads.py + test_model_e2e.py with the TDE heads
	$(PY) scripts/peer_test.py

clean-env:
	rm -rf $(VENV) build

# The prepared GPU check (issue 13; docs/BENCHMARKS.md, "CUDA"): the wheels it carries, and its local stand-in.
.PHONY: device-wheels device-check-sim
device-wheels: env  ## wheels the borrowed GPU machine lacks (CPython 3.12 manylinux x86-64) into build/device-wheels
	bash scripts/device_check/device_wheels.sh

device-check-sim: device-wheels  ## scripts/device_check/device_check.sh --simulate: the GPU check's steps on CPU, in a stand-in venv
	bash scripts/device_check/device_check.sh --simulate

# Issue 20: tde_det installed into a Detectron2 environment built the way a user builds one (CI leg 3).
.PHONY: user-env-check
user-env-check:  ## build/user-env/venv: numpy 1.26 + detectron2 main built by pip; pip install -e . adds only tde_det; suite, peer suite, numpy 2
	bash scripts/user_env_check.sh
