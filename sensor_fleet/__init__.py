"""sensor_fleet: emulated EDR agents that send submissions in the input contract."""
