"""``python -m fastmask`` is the ``fastmask`` command."""

from .cli import main

raise SystemExit(main())
