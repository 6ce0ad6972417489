"""Randomised operation sequences on two disk tiers sharing a root, checked against the files themselves.

Whatever the interleaving of puts, reads, records, evictions, corruption and reopen: a read returns the right
bytes or a miss, never other bytes; the hard cap holds; and after a rescan each tier's byte count equals
what is really on disk.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from micd.store import Digest, Record
from micd.tiers.disk import DiskTier

SOFT, HARD = 40_000, 60_000


def disk_usage(root: Path) -> tuple[int, int]:
    """(bytes, files) of published blobs and records under the root."""
    total = count = 0
    for part in ("cas", "kv"):
        for path in (root / "v1" / part).rglob("*"):
            if path.is_file():
                total += path.stat().st_size
                count += 1
    return total, count


async def open_tier(root: Path) -> DiskTier:
    tier = DiskTier(root, soft_cap=SOFT, hard_cap=HARD, verify_limit=4096)
    await tier.open()
    return tier


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_operations_never_serve_wrong_bytes(tmp_path, seed):
    rng = random.Random(seed)
    root = tmp_path / "cache"
    tiers = [await open_tier(root), await open_tier(root)]
    pool = [rng.randbytes(rng.choice([10, 300, 3000, 9000])) for _ in range(30)]
    digests = [Digest.of(data, rng.choice(["sha256", "blake3"])) for data in pool]
    written: dict[str, set[bytes]] = {}  # every value ever stored under each key
    try:
        for _ in range(250):
            tier = rng.choice(tiers)
            i = rng.randrange(len(pool))
            op = rng.random()
            if op < 0.35:
                await tier.put_bytes(digests[i], pool[i])
            elif op < 0.65:
                got = await tier.get_bytes(digests[i])
                assert got is None or got == pool[i]
            elif op < 0.72:
                missing = await tier.find_missing(digests)
                assert all(d in digests for d in missing)
            elif op < 0.82:
                key = f"k{rng.randrange(5)}"
                record = Record(rng.randbytes(rng.randrange(50)), (digests[i],))
                written.setdefault(key, set()).add(record.value)
                await tier.put_record("ns", key, record)
            elif op < 0.88:
                key = f"k{rng.randrange(5)}"
                got_record = await tier.get_record("ns", key)
                # The other tier may have replaced it since, but it is always a value stored under that key.
                assert got_record is None or got_record.value in written[key]
            elif op < 0.92:
                await tier.evict(target=rng.randrange(SOFT))
            elif op < 0.96:
                path = tier.layout.blob_path(digests[i])
                if path.exists():
                    raw = bytearray(path.read_bytes())
                    raw[rng.randrange(len(raw))] ^= 0xFF
                    path.write_bytes(bytes(raw))
            else:
                slot = tiers.index(tier)
                await tier.close()
                tiers[slot] = await open_tier(root)
            assert tier.used_bytes <= HARD + max(len(p) for p in pool)
        for tier in tiers:
            await tier.settled()
        on_disk, files = disk_usage(root)
        assert on_disk <= HARD
        for tier in tiers:
            await tier.refresh()
            assert (tier.used_bytes, tier.entry_count) == (on_disk, files)
        for digest, data in zip(digests, pool, strict=True):
            got = await tiers[0].get_bytes(digest)
            assert got is None or got == data
    finally:
        for tier in tiers:
            await tier.close()
