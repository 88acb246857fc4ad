import sys

from tamperaudit.cli import main

# The guard matters: vLLM starts its workers with the spawn method, which imports this
# module again in each child; without it every child would run the command again.
if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
