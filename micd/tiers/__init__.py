"""Storage tiers (memory, disk, S3) and their composition; each implements `micd.store.Cas` and `Kv`."""
