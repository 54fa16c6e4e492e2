"""`python -m router`: the same as `pagoda router`."""

import sys

from router.main import main

sys.exit(main())
