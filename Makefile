# The two commands of the README. Each creates the project's virtual environment when needed.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: demo test venv browser clean-runs

venv: $(STAMP)

# Reinstall when the project's dependencies change. torch/torchvision are pinned in pyproject.toml;
# pip on Python 3.11 here takes them from the machine's local wheel store.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "schn needs Python 3.11+ (set PYTHON=python3.11)")'
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,milvus]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/schn demo

test: $(STAMP) browser
	$(VENV)/bin/python -m pytest -q

# Debian's Chromium for the browser test of the web page (Playwright drives it; it never downloads
# a browser). Installed where apt-get can run as root; elsewhere that one test is skipped.
browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "note: no /usr/bin/chromium (apt-get install chromium); the browser test will be skipped"

clean-runs:
	rm -rf runs
