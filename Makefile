# Two commands on a fresh machine: `make demo` and `make test`. Everything else is a helper.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
EXTRAS ?= serve,train,eval,dev,bench
comma := ,
# Reinstall only when the dependency list changes; pip's cache makes a reinstall cheap.
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)-$(subst $(comma),_,$(EXTRAS))

.PHONY: demo test install system-deps services-start services-stop services-status lint clean help

help:
	@echo "make demo   - install, generate a catalog, train a tiny model, index it and serve on :8000"
	@echo "make test   - install, start Kafka/Redis/Prometheus (deploy/local), run the whole suite"
	@echo "make lint   - ruff check and ruff format --check"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip setuptools wheel
	# torch first, then the rest without build isolation: deepspeed builds against this torch.
	$(PIP) install -q "torch>=2.2"
	$(PIP) install -q --no-build-isolation -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# Redis, Prometheus, Java 17 and Maven from Debian's packages, only when missing.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

demo: install
	$(VENV)/bin/m5 demo

services-start: system-deps install
	deploy/local/services.sh start all

services-stop:
	deploy/local/services.sh stop all

services-status:
	deploy/local/services.sh status all

test: services-start
	CI=$${CI:-} $(PY) -m pytest -q -p no:cacheprovider

# ruff: lint rules and the formatter's check, configured in pyproject.toml
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf .m5 .cache/m5 build *.egg-info
