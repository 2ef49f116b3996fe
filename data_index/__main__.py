from data_index.cli import main

raise SystemExit(main())
