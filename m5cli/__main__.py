import sys

from m5cli.main import main

sys.exit(main())
