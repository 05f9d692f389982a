"""The HTTP API: device registration, broker address, owner accounts and devices, health."""
