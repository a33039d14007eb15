"""`make bench`: drain one backlog with the daemon and two reference strategies, and compare."""
