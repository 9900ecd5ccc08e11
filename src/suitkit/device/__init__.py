"""The firmware consumer (RFC 9019 §3): device state, fetchers, install, and the wiring to
a bootloader."""
