# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test venv system-packages lint proto bench clean

# Every version from constraints.txt, as in the image (scripts/install.sh) and the demo.
$(VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# compat mode puts the checkout on sys.path, where twistd's plugin scan finds twisted/plugins
	$(PY) -m pip install -q -c constraints.txt -e '.[test]' --config-settings editable_mode=compat
	touch $@

venv: $(VENV)/.installed

# What the tests and the demo run against, from Debian's packages when missing:
# redis-server (the fleet's Redis), chromium (the browser participant),
# systemd-analyze (verifies deploy/systemd/mc@.service) and promtool (checks and
# unit-tests deploy/prometheus/; Debian ships it in the prometheus package).
APT_PACKAGES := redis-server:redis-server chromium:chromium systemd-analyze:systemd \
	promtool:prometheus
system-packages:
	@missing=""; for pair in $(APT_PACKAGES); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing with apt-get"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  for service in redis-server prometheus prometheus-node-exporter; do \
	    $(SUDO) systemctl disable --now $$service >/dev/null 2>&1 || true; done; fi

test: venv system-packages
	$(VENV)/bin/ruff check --output-format concise .
	$(PY) -m pytest -q -ra

demo: venv system-packages
	$(PY) scripts/demo.py

lint: venv
	$(VENV)/bin/ruff check .

proto: venv
	$(PY) scripts/gen_proto.py

bench: venv system-packages
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[bench]' --config-settings editable_mode=compat
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
