from sonoshot.cli import main

raise SystemExit(main())
