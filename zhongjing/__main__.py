from zhongjing.cli import main

raise SystemExit(main())
