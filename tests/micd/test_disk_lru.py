"""The disk tier's pure LRU: ordering, byte accounting and victim selection."""

from __future__ import annotations

from micd.tiers.disk.evict import low_water
from micd.tiers.disk.lru import Entry, Lru


def make() -> Lru:
    return Lru([("a", Entry(10, 1)), ("b", Entry(20, 2)), ("c", Entry(30, 3))])


def test_build_counts_bytes_and_keeps_order():
    lru = make()
    assert lru.used == 60 and len(lru) == 3
    assert lru.keys() == ["a", "b", "c"]
    assert "b" in lru and "z" not in lru


def test_touch_moves_to_the_recent_end_and_never_goes_back_in_time():
    lru = make()
    assert lru.touch("a", 100)
    assert lru.keys() == ["b", "c", "a"]
    assert lru.touch("a", 50)
    assert lru.get("a") == Entry(10, 100)
    assert not lru.touch("zz", 1)


def test_add_new_and_replace():
    lru = make()
    assert lru.add("d", 5, 9)
    assert lru.used == 65 and lru.keys()[-1] == "d"
    assert not lru.add("a", 15, 10)  # a replaced record with a new size
    assert lru.used == 70 and lru.keys() == ["b", "c", "d", "a"]


def test_remove():
    lru = make()
    assert lru.remove("b") == Entry(20, 2)
    assert lru.remove("b") is None
    assert lru.used == 40 and lru.keys() == ["a", "c"]


def test_victims_oldest_first_until_under_target_without_removing():
    lru = make()
    assert lru.victims(60) == []
    assert [k for k, _ in lru.victims(59)] == ["a"]
    assert [k for k, _ in lru.victims(30)] == ["a", "b"]
    assert [k for k, _ in lru.victims(29)] == ["a", "b", "c"]
    assert [k for k, _ in lru.victims(0, skip={"a"})] == ["b", "c"]
    assert lru.used == 60 and len(lru) == 3


def test_duplicate_keys_in_input_keep_the_last():
    lru = Lru([("a", Entry(1, 1)), ("a", Entry(5, 2))])
    assert lru.used == 5 and len(lru) == 1


def test_low_water_is_below_the_soft_cap():
    assert low_water(1000) == 900
    assert low_water(1) == 1
    assert low_water(10 << 30) < 10 << 30


def test_given_total_is_trusted_and_recount_fixes_it():
    lru = Lru([("a", (1, 1)), ("b", (2, 2))], used=3)
    assert lru.used == 3
    lru.used = 99
    assert lru.recount() == 3 and lru.used == 3


def test_resize_keeps_recency():
    lru = make()
    assert lru.resize("a", 15)
    assert lru.used == 65 and lru.keys() == ["a", "b", "c"] and lru.get("a") == Entry(15, 1)
    assert not lru.resize("zz", 1)
