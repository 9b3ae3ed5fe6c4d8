"""BufferedTable: one changelog record per changed key per batch, none for a key created and
deleted within the batch (no broker: a fake faust table records what would be sent)."""

from __future__ import annotations

from typing import Any

from segstream.services.monitor.app import BufferedTable


class FakeTable:
    """The two things BufferedTable uses of a faust table: its store and send_changelog."""

    def __init__(self) -> None:
        self.data: dict[Any, Any] = {}
        self.sent: list[tuple[int | None, Any, Any]] = []

    def send_changelog(self, partition: int | None, key: Any, value: Any, **kw: Any) -> None:
        self.sent.append((partition, key, value))


def test_each_changed_key_is_sent_once_with_its_final_value() -> None:
    ft = FakeTable()
    bt = BufferedTable(ft)
    bt.partition = 2
    bt["a"] = 1
    bt["a"] = 2
    bt["b"] = 3
    assert bt.flush() == 2
    assert ft.sent == [(2, "a", 2), (2, "b", 3)]


def test_a_key_created_and_deleted_in_one_batch_sends_nothing() -> None:
    ft = FakeTable()
    bt = BufferedTable(ft)
    bt.partition = 0
    bt["pending"] = [0, 1]
    del bt["pending"]
    bt["kept"] = 1
    assert bt.flush() == 1
    assert ft.sent == [(0, "kept", 1)]
    assert "pending" not in ft.data
    assert bt.skipped == 1


def test_a_key_that_existed_before_the_batch_gets_its_tombstone() -> None:
    ft = FakeTable()
    bt = BufferedTable(ft)
    bt.partition = 1
    bt["old"] = 1
    bt.flush()
    ft.sent.clear()
    # changed then deleted in the next batch: the changelog holds 1, so a tombstone is due
    bt["old"] = 5
    del bt["old"]
    assert bt.flush() == 1
    assert ft.sent == [(1, "old", None)]
    # a recovered key (in the store, never written by this object) deleted: tombstone too
    ft.sent.clear()
    ft.data["recovered"] = 7
    bt.pop("recovered")
    assert bt.flush() == 1
    assert ft.sent == [(1, "recovered", None)]


def test_a_key_recreated_after_its_tombstone_and_deleted_again_sends_nothing() -> None:
    ft = FakeTable()
    bt = BufferedTable(ft)
    bt.partition = 0
    bt["k"] = 1
    bt.flush()
    del bt["k"]
    bt.flush()  # tombstone sent
    ft.sent.clear()
    bt["k"] = 2
    del bt["k"]
    assert bt.flush() == 0  # the changelog's last record for k is already a tombstone
    assert ft.sent == []
