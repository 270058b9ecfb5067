"""`python -m raycifar COMMAND ...` is `raycifar COMMAND ...`."""

import sys

from raycifar.cli.main import main

sys.exit(main())
