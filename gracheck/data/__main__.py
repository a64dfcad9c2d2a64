"""``python -m gracheck.data --check`` / ``--download mnist [--dest DIR] [--base-url URL]``."""

import sys

from gracheck.data._download import main

sys.exit(main())
