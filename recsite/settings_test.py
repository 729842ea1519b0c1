"""The settings pytest runs with (pyproject.toml): the service's own, with a key that only tests use. It goes into
the environment so that the processes the tests start (web server, workers, beat) inherit it."""

import os

os.environ["SECRET_KEY"] = os.environ.get("SECRET_KEY") or "test-only-secret-key-never-used-outside-the-test-suite"

from recsite.settings import *  # noqa: F403
