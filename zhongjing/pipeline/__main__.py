"""`python -m zhongjing.pipeline` = `zhongjing pipeline`."""

import sys

from zhongjing.cli import main

raise SystemExit(main(["pipeline", *sys.argv[1:]]))
