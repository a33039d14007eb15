"""`python -m sensor_fleet` is the `sensor-fleet` console script."""

from sensor_fleet.cli import main

raise SystemExit(main())
