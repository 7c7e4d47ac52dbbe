from flexgc.cli import main

raise SystemExit(main())
