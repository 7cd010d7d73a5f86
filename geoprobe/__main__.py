import sys

from geoprobe.cli import main

sys.exit(main())
