import sys

from trtkv.cli import main

sys.exit(main())
