"""`python -m auglocal` is `auglocal-launch`."""

import sys

from auglocal.launch.cli import main

sys.exit(main())
