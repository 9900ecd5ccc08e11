"""The pure core of suitkit: numbers, model, codec, COSE, crypto, verify, processor.

Nothing here touches sockets, files, the clock or a database; time, randomness and limits are
parameters. The core imports nothing from suitkit except ``errors`` and ``limits``.
"""
