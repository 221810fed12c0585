import sys

from untok.cli import main

sys.exit(main())
