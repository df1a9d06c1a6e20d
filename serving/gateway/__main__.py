"""`python -m serving.gateway --config gateway.toml ...`: the gateway as a program (compose, Docker)."""

import sys

from serving.gateway.app import main

sys.exit(main())
