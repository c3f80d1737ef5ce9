from xpud.cli import main

raise SystemExit(main())
