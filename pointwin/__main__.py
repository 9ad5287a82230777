from pointwin.cli import main

raise SystemExit(main())
