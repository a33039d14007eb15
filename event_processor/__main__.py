"""`python -m event_processor` is the same as the `event-processor` console script."""

from event_processor.cli import main

raise SystemExit(main())
