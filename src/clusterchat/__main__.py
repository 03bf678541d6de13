import sys

from clusterchat.cli import main

sys.exit(main())
