# The two set-up commands: `make run` and `make test`. Both need only python3 (3.11) on the PATH.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)

.PHONY: run test install migrate demo bench clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# The secret key of `make run`, `make migrate` and `make demo` unless SECRET_KEY is set: generated once, readable by
# its owner only, kept out of git (var/ is ignored) and reused, so that sessions survive a restart.
KEY_FILE := var/secret_key
$(KEY_FILE):
	mkdir -p $(@D)
	umask 077 && $(PYTHON) -c "import secrets; print(secrets.token_urlsafe(50))" > $@.tmp && mv $@.tmp $@
run migrate demo: export SECRET_KEY ?= $(shell cat $(KEY_FILE) 2>/dev/null)

migrate: install $(KEY_FILE)
	$(PY) manage.py migrate --noinput

# bootstrap_demo reuses the demo login and API key it kept in var/demo_credentials.json (owner-only), or says
# plainly what it replaced (a changed password, a revoked key).
run: migrate
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PY) manage.py bootstrap_demo
	$(VENV)/bin/honcho start

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# The lifecycle demo on a database of its own, fresh each time (DEMO_ARGS="--dataset PATH" for MovieLens).
demo: install $(KEY_FILE)
	rm -f var/demo.sqlite3*
	DATABASE_URL=sqlite:///$(CURDIR)/var/demo.sqlite3 $(PY) manage.py migrate --noinput --verbosity 0
	DATABASE_URL=sqlite:///$(CURDIR)/var/demo.sqlite3 $(PY) manage.py retraining_demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) var
