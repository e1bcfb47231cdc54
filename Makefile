# Two commands do all the set-up: `make demo` and `make test`. Both create .venv/ on first use and reuse it after;
# the stamp file is named after pyproject.toml's hash, so a change of dependencies reinstalls.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: demo test install clean-venv browser ocr java

demo: $(STAMP) ocr java
	$(VENV)/bin/maemi demo

test: $(STAMP) browser ocr java
	$(PY) -m pytest

# The page test (tests/test_serve_page.py) drives a real headless Chromium: install Debian's when it is missing.
# Without root or apt it warns, and that test skips saying why.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } || \
		echo "warning: could not install chromium and chromium-driver (needs root and apt): the page test will skip"

# Reading a scale bar's label (maemi.measure.scalebar) runs Tesseract OCR: install Debian's when it is missing. Without
# it, scales still come from metadata; a scale bar is reported unread, saying why, and the OCR tests skip.
ocr:
	@command -v tesseract >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tesseract-ocr; } || \
		echo "warning: could not install tesseract-ocr (needs root and apt): scale bars will not be read"

# METEOR (pycocoevalcap, in `maemi eval` and the demo) runs a Java program: install Debian's headless JRE when there is
# no java. Without it, METEOR (and so the evaluation) stops with an error that says to install a Java runtime.
java:
	@command -v java >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless; } || \
		echo "warning: could not install default-jre-headless (needs root and apt): METEOR will be unavailable"

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build (see ../shared/notes/dependencies.md).
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

clean-venv:
	rm -rf $(VENV)
