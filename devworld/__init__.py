"""The development world: the embedded AWS emulator, the fault proxy, read-back verification,
the demo and the bench. The daemon never imports it; it needs the `demo` extra (moto, rich).
"""
