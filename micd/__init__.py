"""micd: the per-session local build-cache daemon (storage core, tiers, servers, lifecycle)."""
