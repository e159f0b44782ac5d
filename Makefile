# The two commands of README.md: `make demo` (main job) and `make test`.
PY := .venv/bin/python

.PHONY: env demo test clean-env

env:  ## create/update .venv with the pinned environment (idempotent)
	bash scripts/setup_env.sh

demo: env  ## train + evaluate De-confound-TDE on the embedded long-tailed demo set (CPU)
	$(PY) tools/train_net.py --config-file configs/demo/tde_mask_rcnn_demo.yaml

test: env  ## run the test suite
	$(PY) -m pytest tests -q

clean-env:
	rm -rf .venv build
