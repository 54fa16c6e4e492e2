"""`python -m engine_service ...`: the same as `pagoda engine ...`."""

import sys

from engine_service.server.main import main

sys.exit(main())
