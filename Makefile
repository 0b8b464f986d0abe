# dicom-edge-gateway — every target sets up what it needs on a fresh Debian 12 /
# Raspberry Pi OS machine (apt-get as root, or through sudo).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEB_PACKAGES := dcmtk dicom3tools libsystemd-dev pkg-config lrzsz stunnel4 chromium \
                systemd shellcheck cage xwayland orthanc orthanc-dicomweb nginx curl fuse3 \
                ffmpeg cpio
PYTEST_ARGS ?=
BENCH ?=

.DEFAULT_GOAL := help
# What make image / make image-test need on the build machine (never make test).
IMAGE_DEB_PACKAGES := mmdebstrap qemu-system-x86 qemu-system-arm qemu-user-static binfmt-support \
                      dosfstools mtools e2fsprogs fdisk parted cpio xz-utils curl openssh-client \
                      arch-test socat
BASE ?= raspios
ARCH ?= amd64
.PHONY: help deps venv compile test lint typecheck demo bench soak fuzz clean install-system image image-deps \
        image-test

help: ## show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

deps: ## install the Debian packages the gateway and its tests use
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; \
	  else echo "need root (or sudo) to install: $$missing" >&2; exit 1; fi; \
	  echo "installing Debian packages: $$missing"; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# compat: a plain path entry, not an import hook run by every Python start
	# (22 ms of each command's start-up: the image's wheel has none either)
	$(BIN)/pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $@

venv: deps $(STAMP) ## create the virtual environment with the gateway and test tools

# Byte-compiled once, as pip compiles the installed wheel: a shell that sets
# PYTHONDONTWRITEBYTECODE would otherwise compile every module at each start
# of every process the tests and benchmarks run (stale files are not used).
compile: venv ## byte-compile the sources, as pip does for the installed wheel
	$(BIN)/python -m compileall -q gateway drivers tests >/dev/null

test: venv compile ## run the tests, ruff and mypy (what CI runs)
	$(BIN)/pytest $(PYTEST_ARGS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check gateway drivers tests
	$(BIN)/mypy

lint: venv ## ruff and mypy only
	$(BIN)/ruff check .
	$(BIN)/mypy

demo: venv ## end-to-end demo on loopback: test pattern → queue → TLS C-STORE
	$(BIN)/dicom-gateway demo

bench: venv compile ## benchmarks against DCMTK (never part of make test)
	$(BIN)/python -m tests.benchmarks $(BENCH)

soak: venv ## the whole service for 30 min (SOAK_MINUTES) + 2,000 power cuts (never part of make test)
	$(BIN)/python -m tests.soak

FUZZ_EXAMPLES ?= 100000
FUZZ_TIMEOUT ?= 1800
fuzz: venv ## the fuzzers long: FUZZ_EXAMPLES inputs each, at most FUZZ_TIMEOUT s each (make test runs them briefly)
	FUZZ_PROFILE=long FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest tests/fuzz -q --timeout=$(FUZZ_TIMEOUT) $(PYTEST_ARGS)

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info test-artifacts

PREFIX_APP ?= /opt/dicom-gateway
PIP_INSTALL_ARGS ?=
UNITDIR ?= /etc/systemd/system

install-system: ## install the gateway, its users and hardened units (root; DESTDIR= stages a root tree)
	@[ "$$(id -u)" = 0 ] || { echo "install-system: run as root" >&2; exit 1; }
	$(PYTHON) -m venv $(DESTDIR)$(PREFIX_APP)/venv
	$(DESTDIR)$(PREFIX_APP)/venv/bin/pip install -q $(PIP_INSTALL_ARGS) .
	install -D -m 0644 -t $(DESTDIR)$(UNITDIR) systemd/*.service
	install -D -m 0644 systemd/sysusers.d/dicom-gateway.conf $(DESTDIR)/usr/lib/sysusers.d/dicom-gateway.conf
	install -D -m 0644 systemd/tmpfiles.d/dicom-gateway.conf $(DESTDIR)/usr/lib/tmpfiles.d/dicom-gateway.conf
	@if [ -z "$(DESTDIR)" ]; then \
	  systemd-sysusers dicom-gateway.conf && systemd-tmpfiles --create dicom-gateway.conf && \
	  systemctl daemon-reload && \
	  systemctl enable dicom-gateway.service dicom-gateway-forwarder.service && \
	  echo "installed; put gateway.toml, tls/ and pin in /etc/dicom-gateway, then: systemctl start dicom-gateway"; \
	else \
	  systemd-sysusers --root=$(DESTDIR) dicom-gateway.conf && \
	  systemd-tmpfiles --root=$(DESTDIR) --create dicom-gateway.conf && \
	  echo "staged into $(DESTDIR): users in its /etc/passwd, directories and modes applied"; \
	fi

image-deps: ## install the Debian packages the image build and its QEMU test use
	@$(MAKE) --no-print-directory deps DEB_PACKAGES="$(IMAGE_DEB_PACKAGES)"

image: image-deps ## the appliance image: Pi OS Lite arm64 (BASE=raspios), or BASE=debian ARCH=amd64|arm64
	BASE=$(BASE) ARCH=$(ARCH) image/build.sh

image-test: venv image-deps ## build the Debian image for ARCH and boot it in QEMU: tests/image (never make test)
	BASE=debian ARCH=$(ARCH) image/build.sh
	IMAGE_ARCH=$(ARCH) $(BIN)/pytest -p no:cacheprovider -s --timeout=2400 --basetemp=image/out/test-tmp tests/image $(PYTEST_ARGS)
