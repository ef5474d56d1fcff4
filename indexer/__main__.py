import sys

from m5cli.main import main

sys.exit(main(["index", *sys.argv[1:]]))
