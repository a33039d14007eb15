"""Operator tools (`dlq inspect`, `dlq redrive`, `tail`): short-lived, synchronous boto3 commands.

The daemon never imports them; `commands` builds their sub-commands' parsers for `cli`, and a
tool's module is imported only when its command runs.
"""
