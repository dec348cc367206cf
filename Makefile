# `make run`: set up and run the whole pipeline on the embedded defaults (the Kubeflow pipeline on
# kfp's local runner, local Ray, MLflow on SQLite, real Fashion-MNIST, demo preset); the last line is
# the path of report.json. `make test`: set up and run every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FASHION_DIR ?= /usr/share/datasets/fashion-mnist
RUN_ARGS ?=
PYTEST_ARGS ?=

IMAGE ?= lethe:0.1.0

.PHONY: run run-direct test test-extended install data postgres lint bench bench-evaluate bench-retrain bench-scaling bench-methods bench-requests image pipeline clean

install: $(VENV)/.installed

# torch first, from the CPU wheel on disk: a bare `torch` requirement would pull CUDA packages.
# The distribution was called `lethe` before it became `lethe-unlearn`: an old install of it is
# dropped first, or both would own the `lethe` command.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { echo "Python venv is missing: apt-get install python3-venv" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip uninstall -q -y lethe 2>/dev/null || true
	$(BIN)/pip install -q -e ".[test]"
	touch $@

# The default data set is Debian's dataset-fashion-mnist; install it when we can (root), else say how.
data:
	@if [ -f "$(FASHION_DIR)/train-images-idx3-ubyte.gz" ] || [ -f "$(FASHION_DIR)/train-images-idx3-ubyte" ]; then \
		exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
		echo "Fashion-MNIST not found in $(FASHION_DIR): run 'sudo apt-get install dataset-fashion-mnist'," >&2; \
		echo "or point FASHION_DIR / --dataset at an IDX folder, image folder or Parquet data set." >&2; \
		exit 1; \
	fi

# py-avataaars (the cartoon-face attribute data set) renders through cairosvg, which needs libcairo.
	@if ! ldconfig -p 2>/dev/null | grep -q 'libcairo.so.2'; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian package libcairo2 (renders the avataaars faces)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libcairo2 >/dev/null; \
		else \
			echo "libcairo2 is missing: 'sudo apt-get install libcairo2' to use --dataset avataaars" >&2; \
		fi; \
	fi

# The request-store tests start a throwaway PostgreSQL server (initdb + pg_ctl): Debian's postgresql.
postgres:
	@if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null; then \
		exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian package postgresql (the request-store tests start their own server)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else \
		echo "PostgreSQL is missing: run 'sudo apt-get install postgresql' (the tests start their own server)" >&2; \
		exit 1; \
	fi

run: install data
	LETHE_FASHION_MNIST_DIR=$(FASHION_DIR) $(BIN)/lethe pipeline run --local $(RUN_ARGS)

# The same steps chained in one process, without kfp (`lethe run`).
run-direct: install data
	LETHE_FASHION_MNIST_DIR=$(FASHION_DIR) $(BIN)/lethe run $(RUN_ARGS)

# The pipeline's IR YAML for a cluster: `make pipeline WORKDIR=/mnt/lethe/nightly`.
WORKDIR ?= /mnt/lethe/nightly
pipeline: install
	LETHE_IMAGE=$(IMAGE) $(BIN)/lethe pipeline compile --workdir $(WORKDIR) --output lethe-pipeline.yaml $(RUN_ARGS)

# The image every component and Ray job runs in (needs Docker).
image:
	docker build -f infra/Dockerfile -t $(IMAGE) --build-arg LETHE_COMMIT=$$(git rev-parse --short HEAD 2>/dev/null) .

test: install data postgres
	LETHE_FASHION_MNIST_DIR=$(FASHION_DIR) $(BIN)/python -m pytest $(PYTEST_ARGS)

# Also the `extended` end-to-end variants (each family's and method's own run; ~15 min more on 2 cores).
test-extended: install data postgres
	LETHE_FASHION_MNIST_DIR=$(FASHION_DIR) $(BIN)/python -m pytest --extended $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check lethe tests ray_jobs components pipelines benchmarks
	$(BIN)/ruff format --check lethe tests ray_jobs components pipelines benchmarks

# Ray Train vs a plain loop on the same job and data (one pretraining epoch, the unlearning), GEMM rate,
# then `make run`'s command against the plain loops' time for its training work (about 25 min on 2 cores).
bench: install data
	LETHE_FASHION_MNIST_DIR=$(FASHION_DIR) $(BIN)/python benchmarks/ray_vs_plain.py --run

# Where the evaluate step's time goes (inpainting, measuring, bootstrap FDs, membership attack), demo sets.
bench-evaluate: install data
	LETHE_FASHION_MNIST_DIR=$(FASHION_DIR) $(BIN)/python benchmarks/evaluation.py

# Unlearning vs retraining the oracle (demo preset, the whole recipe).
bench-retrain: install data
	LETHE_FASHION_MNIST_DIR=$(FASHION_DIR) $(BIN)/python benchmarks/unlearn_vs_retrain.py

# Ray Train 1 vs 2 workers, Ray Tune per-trial time, shards on S3 (local SeaweedFS) vs local disk.
bench-scaling: install data
	LETHE_FASHION_MNIST_DIR=$(FASHION_DIR) $(BIN)/python benchmarks/scaling.py

# decouple_retain vs encoder_noise vs the oracle on one split / original / oracle (demo preset).
bench-methods: install data
	LETHE_FASHION_MNIST_DIR=$(FASHION_DIR) $(BIN)/python benchmarks/methods_vs_oracle.py

# What a deletion request costs: nightly runs over 1, 10 and 100 queued requests (smoke preset).
bench-requests: install
	$(BIN)/python benchmarks/cost_per_request.py

clean:
	rm -rf runs .pytest_cache lethe-pipeline.yaml
