from prunelimit.cli.main import main

raise SystemExit(main())
