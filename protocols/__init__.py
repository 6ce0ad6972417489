"""Wire protocols: one module per protocol, translating wire <-> micd core and nothing else."""
