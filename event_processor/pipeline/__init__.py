"""One submission's way from the receive to the delete: admission, source, processing, message
groups, the sink with its batcher, and the dead letters it sends (docs/design.md)."""
