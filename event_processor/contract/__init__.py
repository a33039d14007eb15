"""The input and output contract: the rules, parsing, the records, the dead-letter format and
the signature envelope. Pure and synchronous: no I/O, no asyncio (docs/contract.md)."""
