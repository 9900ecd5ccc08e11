"""Fleet simulator and fault injection (design.md §2: ``sim`` wires whole systems together).

``firmware`` (keys, signed releases), ``control`` (the operator's HTTP calls), ``faults``
(network cut, hostile mirror, power cut), ``fleet`` (simulated devices in one asyncio process,
installs in a thread pool through the real device agent), ``local`` (a ``suitkit serve`` child
process on loopback), ``scenario`` (the demo: a staged campaign with injected faults) and
``load`` (``suitkit sim fleet``). Like the CLI, ``sim`` is an integration layer: it uses the
author, device and bootloader modules, and reaches the firmware server and the status tracker
only over HTTP.
"""
