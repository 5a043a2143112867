# Every target sets up .venv on first use, so a fresh clone needs only `make <target>`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# CPU: onnxruntime (extra `cpu`); GPU=1: onnxruntime-gpu (extra `gpu`). Never both: they share
# the onnxruntime module, so the other one is uninstalled before this one goes in.
ORT_EXTRA := $(if $(GPU),gpu,cpu)
ORT_PACKAGE := $(if $(GPU),onnxruntime-gpu,onnxruntime)
OTHER_ORT := $(if $(GPU),onnxruntime,onnxruntime-gpu)
STAMP := $(VENV)/.installed-$(ORT_PACKAGE)
MODEL ?= opensetmnist
RUN_DIR ?= runs/default
ORT_THREADS ?= 2

LOAD_USERS ?= 16
LOAD_TIME ?= 60s
LOAD_MIX ?= known=70,unknown=25,bad=5
MAX_FAIL_RATIO ?= 0
MAX_P95_MS ?= 1000

KSERVE_PORT ?= 8085

.PHONY: serve stop serve-kserve stop-kserve test test-fast train export protocol load bench \
	bench-logging drills soak photos clean-venv

# pyproject.toml is the one dependency list; the stamp re-installs when it changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip uninstall --quiet --yes $(OTHER_ORT) 2>/dev/null || true
	rm -f $(VENV)/.installed-$(OTHER_ORT)
	$(PY) -m pip install --quiet -e ".[$(ORT_EXTRA),dev]"
	touch $(STAMP)

# The main job: train the default open-set model if there is none, export, archive, serve.
serve: model_store/$(MODEL).mar
	$(PY) -m handlers.server start --config config.properties --model $(MODEL)

# Graceful: in-flight requests are answered; whatever is left after STOP_TIMEOUT s is killed.
STOP_TIMEOUT ?= 30
stop: $(STAMP)
	$(PY) -m handlers.server stop --timeout $(STOP_TIMEOUT)

# The KServe front (Open Inference Protocol v2) on the same .onnx, 127.0.0.1:$(KSERVE_PORT).
serve-kserve: $(RUN_DIR)/model.onnx | $(STAMP)
	$(PY) -m handlers.kserve_server start --model $(RUN_DIR)/model.onnx --name $(MODEL) \
		--http-port $(KSERVE_PORT) --threads $(ORT_THREADS)

stop-kserve: $(STAMP)
	$(PY) -m handlers.kserve_server stop

test: $(STAMP)
	$(PY) -m pytest -q tests

# The quick loop: no TorchServe, no training past a few steps (tests marked `slow` are skipped).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# NPROC=N: train with N processes under torchrun (DDP; README "Several processes")
TRAIN := $(if $(NPROC),$(VENV)/bin/torchrun --standalone --nproc-per-node=$(NPROC) -m train,$(PY) -m train)

$(RUN_DIR)/model.pt: | $(STAMP)
	$(TRAIN) --method arpl --dataset mnist5k --out $(RUN_DIR)

train: $(RUN_DIR)/model.pt

$(RUN_DIR)/model.onnx: $(RUN_DIR)/model.pt
	$(PY) -m export $(RUN_DIR) --out $(RUN_DIR)/model.onnx

export: $(RUN_DIR)/model.onnx

model_store/$(MODEL).mar: $(RUN_DIR)/model.onnx
	$(PY) -m export.archive $(RUN_DIR)/model.onnx --name $(MODEL) --store model_store --ort-threads $(ORT_THREADS)

# Headless locust against `make serve`'s server; non-zero exit above the thresholds.
load: $(STAMP)
	mkdir -p runs/load
	$(VENV)/bin/locust -f loadtest/locustfile.py --headless -u $(LOAD_USERS) -r $(LOAD_USERS) \
		-t $(LOAD_TIME) --host http://127.0.0.1:8080 --mix $(LOAD_MIX) --run-dir $(RUN_DIR) \
		--model-name $(MODEL) --csv runs/load/load --html runs/load/report.html --only-summary \
		--max-fail-ratio $(MAX_FAIL_RATIO) --max-p95-ms $(MAX_P95_MS)

# Side-by-side throughput/latency benchmark (needs no running server; starts its own).
bench: $(RUN_DIR)/model.pt
	$(PY) loadtest/bench.py --run-dir $(RUN_DIR) --out runs/bench $(if $(BENCH_RESNET),--resnet-run-dir $(BENCH_RESNET)) $(if $(BENCH_RESNET_SIZE),--resnet-size $(BENCH_RESNET_SIZE))

# TorchServe's default logging against log4j2.xml on the small model, ABAB rounds (~5 min).
bench-logging: model_store/$(MODEL).mar
	$(PY) loadtest/logging_bench.py --model $(MODEL) --run-dir $(RUN_DIR) --out runs/bench_logging

# Worker kill, rollout/rollback and graceful stop under load on a server of its own (~1 min).
drills: $(RUN_DIR)/model.onnx | $(STAMP)
	$(PY) loadtest/operations.py --run-dir $(RUN_DIR) --out runs/drills

# SOAK_MINUTES at LOAD_USERS users: memory, log bytes, p99 and failures over time.
SOAK_MINUTES ?= 10
soak: model_store/$(MODEL).mar
	$(PY) loadtest/soak.py --minutes $(SOAK_MINUTES) --users $(LOAD_USERS) --model $(MODEL) \
		--run-dir $(RUN_DIR) --out runs/soak

protocol: $(STAMP)
	$(PY) -m studies.protocol --dataset mnist5k --train-seeds 0,1 --out runs/protocol

# Photo folders: in memory vs streamed, the cache bound, pretrained vs scratch (~25 min).
photos: $(STAMP)
	$(PY) -m studies.photos --out runs/photos

clean-venv:
	rm -rf $(VENV)
