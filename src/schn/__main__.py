from schn.cli import main

raise SystemExit(main())
