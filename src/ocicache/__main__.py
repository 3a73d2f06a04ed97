"""C{python -m ocicache}: the same as the C{ocicache} command."""

import sys

from ._daemon._cli import main

sys.exit(main())
