# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test venv redis-server lint proto bench clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# compat mode puts the checkout on sys.path, where twistd's plugin scan finds twisted/plugins
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

venv: $(VENV)/.installed

# redis-server is what the tests and the demo run against; install it when missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server with apt-get"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
	  $(SUDO) systemctl disable --now redis-server >/dev/null 2>&1 || true; }

test: venv redis-server
	$(VENV)/bin/ruff check --output-format concise .
	$(PY) -m pytest -q -ra

demo: venv redis-server
	$(PY) scripts/demo.py

lint: venv
	$(VENV)/bin/ruff check .

proto: venv
	$(PY) scripts/gen_proto.py

bench: venv redis-server
	$(VENV)/bin/pip install -q -e '.[bench]' --config-settings editable_mode=compat
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
