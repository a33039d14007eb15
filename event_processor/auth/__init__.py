"""Who sent a submission: the key set and the check of each message's signature
(docs/authentication.md)."""
