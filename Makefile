# yolo-slim
#   make demo   set-up + the whole pipeline on the built-in synthetic data -> runs/demo/REPORT.md
#   make test   set-up + real assets + the test suite
#   make real-assets   fetch (cached, sha256-checked) the COCO yolov3-tiny, tree photos, street video
#   make slim CFG=… WEIGHTS=… DATA=… [LABELS=teacher]   your pretrained model -> slim -> REPORT.md
#   make real   make slim on the real assets: COCO yolov3-tiny, label-free, on the street video
# Stages (each reads the previous stage's files under RUN and can be run alone):
#   make data baseline sparse prune prune-layers finetune export report bench
# Beyond one-shot slimming (each from the same RUN's sparse or baseline model):
#   make sensitivity   per-layer cuts for TARGET_FLOPS (or TARGET_SPEEDUP) under MAX_DROP, then prune
#   make iterate       ROUNDS x (prune to ROUND_FLOPS -> fine-tune ROUND_EPOCHS), early stop (or TARGET_SPEEDUP)
#   make unstructured  AMOUNT of the weights zeroed vs channel pruning: sizes and latency
#   make quantize      redo the INT8 ONNX (export writes it) with CALIB_IMAGES, CALIB_METHOD; REPORT
# Override any variable on the command line, e.g.
#   make sparse CFG=cfg/yolov3.cfg DATA=my.data WEIGHTS=yolov3.weights S=0.001 SPARSE_EPOCHS=100
# Defaults live in one place, the recipe RECIPE=recipes/demo.json (`make help` prints them); the
# stages are `yolo-slim pipeline` (make demo = yolo-slim pipeline; make sparse = --stages sparse).
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
export RECIPE CFG DATA WEIGHTS TRANSFER WEIGHTS_CFG RUN IMG BATCH DEVICE WORKERS EPOCHS SPARSE_EPOCHS FT_EPOCHS S SPARSITY \
       PRUNE STRATEGY PERCENT KEEP SHORTCUTS IMPORTANCE KD TEACHER T_CFG TRAIN_ARGS \
       TARGET_FLOPS TARGET_SPEEDUP MAX_DROP ROUNDS ROUND_FLOPS ROUND_SPEEDUP ROUND_EPOCHS AMOUNT CALIB_IMAGES CALIB_METHOD \
       SPARSE_UPDATE SPARSE_WEIGHT SPARSE_TARGET SPARSE_SPEEDUP SPARSE_KILL SPARSE_ORDER SPARSE_RECOVER LATENCY_REPORT LABELS SLIM_ARGS SEED RUNTIME

.PHONY: help install test real-assets slim real data baseline sparse prune prune-layers finetune export report \
        bench benchmarks demo clean clean-run sensitivity iterate unstructured quantize

help:
	@sed -n '2,17p' Makefile | sed 's/^# \{0,1\}//'
	@echo "variables (each overrides its recipe key; the value now):"
	@test -x $(PY) && $(PY) -m yolo_slim.commands pipeline --variables | sed 's/^/  /' || echo "  (make install first)"

install: $(STAMP)

# torch is pinned: on these machines 2.13.0 is the local CPU build; a bare `torch` would pull CUDA
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

test: install real-assets
	$(PY) -m pytest tests

# into $YOLO_SLIM_CACHE (default ~/.cache/yolo-slim); a re-run fetches nothing (docs/real-assets.md)
real-assets: install
	bash scripts/real_assets.sh

data: install
	bash scripts/data.sh
baseline: data
	bash scripts/baseline.sh
sparse: baseline
	bash scripts/sparse.sh
prune: sparse
	bash scripts/prune.sh
prune-layers: sparse
	bash scripts/prune_layers.sh
finetune: prune
	bash scripts/finetune.sh
export: finetune
	bash scripts/export.sh
report: export
	bash scripts/report.sh
sensitivity: sparse
	bash scripts/sensitivity.sh
iterate: sparse
	bash scripts/iterate.sh
unstructured: baseline
	bash scripts/unstructured.sh
quantize: finetune
	bash scripts/quantize.sh

# the whole chain; finished stages are skipped and an interrupted training stage resumes
demo: install
	bash scripts/pipeline.sh

# the benchmark suite (bench/README.md): `make bench` lists them, `make bench NAME=prune ARGS='--threads 1'`
# runs one into bench/results/NAME.md; `make benchmarks` regenerates BENCHMARKS.md from bench/results/
bench: install
	$(PY) -m bench $(if $(NAME),$(NAME) $(ARGS),list)

benchmarks: install
	$(PY) -m bench assemble

clean-run:
	rm -rf $${RUN:-runs/demo}

clean:
	rm -rf runs build *.egg-info .pytest_cache

# the user's path: a pretrained model (the baseline and the teacher) -> sparse -> cut -> KD -> ONNX
slim: install
	bash scripts/slim.sh

# make slim on the real assets: the COCO yolov3-tiny, label-free, on the street video's frames
REAL_CACHE = $${YOLO_SLIM_CACHE:-$$HOME/.cache/yolo-slim}
real: real-assets
	CFG=$(REAL_CACHE)/coco-tiny/yolov3-tiny.cfg WEIGHTS=$(REAL_CACHE)/coco-tiny/yolov3-tiny.weights \
	DATA=$(REAL_CACHE)/vtest/vtest.data LABELS=teacher RUN=$${RUN:-runs/real} bash scripts/slim.sh
