import sys

from tokenizer_service.main import main

sys.exit(main())
