"""``python -m pvq ...``: the ``pvq`` command (:mod:`pvq.cli`) without the installed script."""

import sys

from pvq.cli import main

sys.exit(main())
