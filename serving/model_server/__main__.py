"""`python -m serving.model_server ...`: the tensorflow_model_server command line (see server.py)."""

import sys

from serving.model_server.server import main

sys.exit(main())
