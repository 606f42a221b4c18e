"""`python -m gateway` is the `certainty-gateway` command."""

from gateway.cli import main

raise SystemExit(main())
