"""``python -m broker.devcluster up|down|status|build``."""

from broker.devcluster.cli import main

raise SystemExit(main())
