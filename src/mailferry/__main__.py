from mailferry.cli.main import main

raise SystemExit(main())
