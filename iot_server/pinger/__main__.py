"""`python -m iot_server.pinger`: run the pinger with the app's config from the environment."""

import sys

from .client import main

sys.exit(main())
