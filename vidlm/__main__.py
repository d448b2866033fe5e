import sys

from vidlm.cli import main

sys.exit(main())
