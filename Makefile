# sonoshot: `make serve` runs the daemon (demo detector), `make test` runs the whole suite. Both install what they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PEERS := dcmtk orthanc orthanc-webviewer tesseract-ocr dicom3tools postgresql chromium chromium-driver \
	swift swift-proxy swift-object swift-container swift-account memcached
# initdb and the Orthanc plugins are not on PATH: their absolute paths (globs the shell expands) are checked.
PEER_BINARIES := storescu storescp echoscu dcmsend Orthanc tesseract dciodvfy /usr/lib/postgresql/*/bin/initdb \
	/usr/share/orthanc/plugins/libOrthancWebViewer.so chromium chromedriver swift-proxy-server swift-object-server \
	memcached

.PHONY: serve test peers ocr install bench clean

$(PY):
	python3 -m venv $(VENV)

# torch and torchvision first, pinned, so pip never resolves another build of them.
$(INSTALLED): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test]'
	touch $@

install: $(INSTALLED)

# Debian packages installed when root and missing: $(1) the binaries to look for, $(2) the packages.
define apt_install
	@missing=0; for b in $(1); do command -v $$b >/dev/null || test -e $$b || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(2); \
	  else echo "missing and not root: install $(2)"; fi; \
	fi
endef

# The Debian peers the tests talk to (DCMTK, Orthanc, tesseract, dicom3tools, a PostgreSQL server).
peers:
	$(call apt_install,$(PEER_BINARIES),$(PEERS))

# tesseract: the de-identification verifier fails closed without it.
ocr:
	$(call apt_install,tesseract,tesseract-ocr)

var/deid.key: | $(INSTALLED)
	$(VENV)/bin/sonoshot keygen --out $@

# The demo configuration (built-in demo detector, state under ./var); SERVE_CONFIG=FILE for your own.
SERVE_CONFIG ?= deploy/demo.toml

serve: $(INSTALLED) ocr var/deid.key
	$(VENV)/bin/sonoshot --config $(SERVE_CONFIG) serve

# Two pytest workers by default (TEST_WORKERS=N for more, 0 for one process); a module's tests
# stay on one worker, so its fixtures (a daemon, a corpus) are built once. Tests marked `alone`
# (load tests whose peers' timing another test's load would change) run afterwards, by themselves.
TEST_WORKERS ?= 2

test: $(INSTALLED) peers
	@status=0; \
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not alone" || status=$$?; \
	$(VENV)/bin/python -m pytest -m alone || status=$$?; \
	exit $$status

bench: $(INSTALLED) peers
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) var build *.egg-info
