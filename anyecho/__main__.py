"""``python -m anyecho``, and the ``anyecho`` command's entry point."""

from __future__ import annotations

# First of all: from here on, SIGINT, SIGTERM and SIGHUP end the command quietly,
# even while the imports below run (the package's ``__init__`` imports nothing).
from ._signals import stop_requests

stop_requests.install()

import sys  # noqa: E402

from .cli._main import main  # noqa: E402

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
