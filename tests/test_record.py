"""``@record`` behaves as ``@dataclass(frozen=True)`` does (rfwatch/record.py says why it exists).

Every check makes one class twice from the same body, once with each decorator, and compares what a caller sees:
the instances, the errors (type and wording), ``dataclasses.replace``/``asdict``/``fields``.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
from dataclasses import FrozenInstanceError, dataclass, field

import pytest

from rfwatch.record import record

FROZEN = dataclass(frozen=True)


def _shot(call):
    """What a call gives: its value's repr, or its exception's type and message."""
    try:
        return ("ok", repr(call()))
    except Exception as exc:  # noqa: BLE001 - the exception is what is compared
        return (type(exc).__name__, str(exc))


def make(deco):
    @deco
    class Row:
        """A row."""

        id: int
        path: str
        tags: tuple[str, ...] = ()
        extra: dict = field(default_factory=dict, compare=False)
        note: str | None = field(default=None, repr=False)
        seen: int = field(default=0, hash=False)

    return Row


ROW, FROZEN_ROW = make(record), make(FROZEN)


@record
class Point:
    """At module level, so pickle finds it."""

    x: int
    y: int = 0


CALLS = [
    ((1, "a"), {}),
    ((1,), {"path": "b", "tags": ("x",)}),
    ((), {"id": 2, "path": "c", "note": "n", "extra": {"k": 1}, "seen": 3}),
    ((1, "a", ("t",), {}, "n", 4), {}),
    ((), {}),  # both required missing
    ((1,), {}),  # one missing
    ((), {"path": "p"}),  # the first missing, by keyword the second given
    ((1, "a", (), {}, None, 0, "too many"), {}),
    ((1, "a"), {"id": 3}),  # twice
    ((1, "a"), {"colour": "red"}),  # not a field
]


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_construction_and_its_errors_are_a_frozen_dataclasses(args, kwargs):
    assert _shot(lambda: ROW(*args, **kwargs)) == _shot(lambda: FROZEN_ROW(*args, **kwargs))


def test_too_many_arguments_worded_as_python_does_for_every_shape():
    def shapes(deco):
        @deco
        class Empty:
            pass

        @deco
        class One:
            a: int

        @deco
        class Optional:
            a: int = 0

        return Empty, One, Optional

    for mine, theirs in zip(shapes(record), shapes(FROZEN), strict=True):
        for args in [(), (1,), (1, 2), (1, 2, 3)]:
            assert _shot(lambda m=mine, a=args: m(*a)) == _shot(lambda t=theirs, a=args: t(*a))


def test_repr_eq_and_hash_match():
    for args, kwargs in CALLS[:4]:
        mine, theirs = ROW(*args, **kwargs), FROZEN_ROW(*args, **kwargs)
        assert repr(mine) == repr(theirs)
        mine_tags = dataclasses.replace(mine, extra={})
        theirs_tags = dataclasses.replace(theirs, extra={})
        assert hash(mine_tags) == hash(theirs_tags)
    assert ROW(1, "a") == ROW(1, "a", extra={"ignored": True}, seen=0)  # compare=False is left out
    assert ROW(1, "a") != ROW(1, "b")
    assert ROW(1, "a", seen=1) != ROW(1, "a", seen=2)  # hash=False still compares
    assert hash(ROW(1, "a", seen=1)) == hash(ROW(1, "a", seen=2))  # ... but is not hashed
    assert ROW(1, "a") != FROZEN_ROW(1, "a")  # another class is never equal
    assert ROW(1, "a").__eq__((1, "a")) is NotImplemented
    assert {ROW(1, "a"), ROW(1, "a")} == {ROW(1, "a")}


def test_assignment_and_deletion_are_refused():
    for row in (ROW(1, "a"), FROZEN_ROW(1, "a")):
        with pytest.raises(FrozenInstanceError, match="cannot assign to field 'id'"):
            row.id = 2
        with pytest.raises(FrozenInstanceError, match="cannot assign to field 'other'"):
            row.other = 2
        with pytest.raises(FrozenInstanceError, match="cannot delete field 'path'"):
            del row.path
        assert row.id == 1


def test_a_plain_subclass_may_set_its_own_attributes_as_with_a_frozen_dataclass():
    for base in (ROW, FROZEN_ROW):

        class Sub(base):
            pass

        sub = Sub(1, "a")
        sub.cache = 5  # not a field: allowed on a subclass
        assert sub.cache == 5
        with pytest.raises(FrozenInstanceError):
            sub.id = 2


def test_dataclass_functions_and_the_copy_modules_work():
    row = ROW(1, "a", ("t",), {"k": [1]}, "n", 2)
    assert [f.name for f in dataclasses.fields(ROW)] == [f.name for f in dataclasses.fields(FROZEN_ROW)]
    assert dataclasses.is_dataclass(row)
    assert dataclasses.asdict(row) == dataclasses.asdict(FROZEN_ROW(1, "a", ("t",), {"k": [1]}, "n", 2))
    assert dataclasses.astuple(row) == (1, "a", ("t",), {"k": [1]}, "n", 2)
    assert dataclasses.replace(row, path="b") == ROW(1, "b", ("t",), {"k": [1]}, "n", 2)
    assert ROW.__match_args__ == FROZEN_ROW.__match_args__
    assert copy.deepcopy(row) == row and copy.copy(row) == row
    assert pickle.loads(pickle.dumps(Point(3, 4))) == Point(3, 4)
    assert ROW(1, "a").extra is not ROW(1, "a").extra  # a fresh default for each

    match row:
        case ROW(1, path):
            assert path == "a"
        case _:
            pytest.fail("match by position")


def test_post_init_runs_and_may_set_fields_as_frozen_dataclasses_do():
    def make_checked(deco):
        @deco
        class Checked:
            low: int
            high: int
            span: int = 0

            def __post_init__(self):
                if self.low > self.high:
                    raise ValueError(f"low {self.low} above high {self.high}")
                object.__setattr__(self, "span", self.high - self.low)

        return Checked

    for cls in (make_checked(record), make_checked(FROZEN)):
        assert cls(1, 4).span == 3
        with pytest.raises(ValueError, match="low 5 above high 1"):
            cls(5, 1)


def test_methods_of_the_class_own_stay():
    def make_own(deco):
        @deco
        class Own:
            a: int

            def __repr__(self):
                return f"<own {self.a}>"

            def __eq__(self, other):
                return isinstance(other, Own) and abs(self.a - other.a) < 2

            def __hash__(self):
                return 7

        return Own

    for cls in (make_own(record), make_own(FROZEN)):
        assert repr(cls(1)) == "<own 1>" and cls(1) == cls(2) and hash(cls(1)) == 7


def test_an_own_eq_without_hash_gets_the_fields_hash_as_with_a_frozen_dataclass():
    def make_eq(deco):
        @deco
        class EqOnly:
            a: int

            def __eq__(self, other):
                return True

        return EqOnly

    mine, theirs = make_eq(record), make_eq(FROZEN)
    assert hash(mine(3)) == hash(theirs(3)) == hash((3,))


def test_what_a_record_cannot_be_is_refused_when_the_class_is_made():
    with pytest.raises(TypeError, match="init=False"):

        @record
        class Hidden:
            a: int = field(default=0, init=False)

    with pytest.raises(TypeError, match="a record makes its own __init__"):

        @record
        class Parsed:
            a: int

            def __init__(self, text):
                object.__setattr__(self, "a", int(text))

    with pytest.raises(TypeError, match="Cannot overwrite attribute __setattr__"):

        @record
        class Settable:
            a: int

            def __setattr__(self, name, value):
                pass


def test_a_subclass_s_post_init_is_the_one_that_runs():
    for deco in (record, FROZEN):

        @deco
        class Base:
            a: int

            def __post_init__(self):
                object.__setattr__(self, "a", self.a + 1)

        class Child(Base):
            def __post_init__(self):
                object.__setattr__(self, "a", self.a * 10)

        assert (Base(1).a, Child(1).a) == (2, 10), deco


def test_a_frozen_dataclass_may_subclass_a_record_and_the_signature_is_the_fields():
    import inspect

    for base in (ROW, FROZEN_ROW):

        @FROZEN
        class Wider(base):
            more: int = 7

        wide = Wider(1, "a")
        assert (wide.id, wide.more) == (1, 7)
        with pytest.raises(FrozenInstanceError):
            wide.more = 8
    assert str(inspect.signature(ROW)) == str(inspect.signature(FROZEN_ROW))
    assert dataclasses.fields(ROW) and ROW.__dataclass_params__.frozen is True


def test_rfwatchs_value_classes_are_records():
    """The classes the light commands define at import are records (the reason the module exists)."""
    from rfwatch.config import Config, RoboflowConfig, WatchConfig
    from rfwatch.journal import FileRow, StepRow
    from rfwatch.roboflow.result import Prediction

    for cls in (Config, RoboflowConfig, WatchConfig, FileRow, StepRow, Prediction):
        assert "__record_spec__" in cls.__dict__, cls
