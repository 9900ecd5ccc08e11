"""The firmware consumer (RFC 9019 §3): device state, fetchers, install, the wiring to
a bootloader, and the agent's self-update (``selfupdate``: the launcher)."""
