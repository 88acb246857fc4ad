import sys

from tamperaudit.cli import main

sys.exit(main(sys.argv[1:]))
