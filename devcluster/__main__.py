"""``python -m devcluster up|down|status|build``."""

from devcluster.lifecycle import main

raise SystemExit(main())
