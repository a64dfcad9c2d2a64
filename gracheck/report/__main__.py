"""``python -m gracheck.report``; see :func:`gracheck.report.main`."""

import sys

from gracheck.report import main

sys.exit(main())
