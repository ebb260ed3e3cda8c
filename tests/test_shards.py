"""How credentials are laid out over the DAG's shards (``airflow_provider_servicetitan.shards``)."""

from __future__ import annotations

import pytest

from airflow_provider_servicetitan.shards import check_capacity, group_id, parse_shards, shard_of


@pytest.mark.parametrize(("text", "shards"), [(None, 1), ("", 1), (" ", 1), ("1", 1), ("4", 4), (" 12 ", 12)])
def test_parse_shards(text, shards):
    assert parse_shards(text) == shards


@pytest.mark.parametrize("text", ["0", "-1", "x", "2.0"])
def test_parse_shards_refuses_what_is_not_a_positive_whole_number(text):
    with pytest.raises(
        ValueError, match=rf"SERVICETITAN_CREDENTIAL_SHARDS must be a whole number of at least 1, got '{text}'"
    ):
        parse_shards(text)


def test_group_ids_keep_the_first_shard_named_credential():
    assert [group_id(number) for number in (1, 2, 10)] == ["credential", "credential_2", "credential_10"]


def test_shards_fill_in_list_order_and_appending_moves_no_one():
    credentials = [f"c{i}" for i in range(25)]
    shards = [shard_of(credentials, number, max_map_length=10) for number in (1, 2, 3, 4)]

    assert shards == [credentials[:10], credentials[10:20], credentials[20:], []]
    grown = [*credentials, "c25"]
    assert [shard_of(grown, number, max_map_length=10) for number in (1, 2)] == shards[:2]


def test_capacity_is_shards_times_max_map_length():
    check_capacity(30, shards=3, max_map_length=10)
    with pytest.raises(ValueError, match=r"31 credentials do not fit 3 shard\(s\) of at most 10") as refused:
        check_capacity(31, shards=3, max_map_length=10)
    assert "set SERVICETITAN_CREDENTIAL_SHARDS to 4 or more" in str(refused.value)
    assert "[core] max_map_length" in str(refused.value)
