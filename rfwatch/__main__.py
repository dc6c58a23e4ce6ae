from rfwatch.cli import main

raise SystemExit(main())
