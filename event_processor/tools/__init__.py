"""Operator tools (`dlq inspect`, `dlq redrive`, `tail`): short-lived, synchronous boto3 commands.

The daemon never imports them; each registers its own sub-command with `cli` (`register`).
"""
