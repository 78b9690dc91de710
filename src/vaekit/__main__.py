import sys

from vaekit.app.cli import main

sys.exit(main())
