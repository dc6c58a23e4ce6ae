"""``@record``: an immutable dataclass whose methods are shared functions instead of code compiled per class.

``@dataclass(frozen=True)`` writes the source of six methods for each class (``__init__``, ``__repr__``,
``__eq__``, ``__hash__``, ``__setattr__``, ``__delattr__``) and compiles each with ``exec`` when the class is
defined: about 0.1 ms a method on Python 3.11. The 27 value classes ``rfwatch status`` defines (the config's, the
journal's rows, a prediction's) spent some 19 ms there, a third of what status cost above the interpreter's own
start (issue 23: status and history at most 3x ``python -c pass``), and every command paid it.

A record is still a dataclass: ``dataclasses.fields``, ``replace`` and ``asdict`` and ``__match_args__`` work, and
it behaves as ``@dataclass(frozen=True)`` does: the same ``__repr__``, ``__eq__`` and ``__hash__``, the same
``TypeError`` for a wrong call, ``FrozenInstanceError`` on assignment, ``__post_init__`` called
(tests/test_record.py holds each against a frozen dataclass). The dataclass is made with nothing to generate and
the methods below, written once, read the class's fields from a spec built at decoration.

What it costs: ``__init__`` binds its arguments in a loop, about 1 microsecond for a few fields and 3 for twenty,
against a third of that compiled. Records are made per journal row, prediction or config section, never in a
per-pixel loop. Refused at decoration (use ``@dataclass``): ``InitVar``, ``kw_only``, fields with ``init=False``,
and a class's own ``__init__``. ``inspect.signature`` of a record is made when first asked for.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, FrozenInstanceError
from typing import Any, TypeVar

__all__ = ["record"]

T = TypeVar("T", bound=type)


class _Spec:
    """What the shared methods need to know of one record class, computed once at decoration."""

    __slots__ = ("cls", "names", "params", "required", "repr_names", "compare_names", "hash_names")

    def __init__(self, cls: type):
        fields = dataclasses.fields(cls)
        for f in cls.__dict__["__dataclass_fields__"].values():
            if "InitVar" in str(f.type):
                raise TypeError(f"@record {cls.__qualname__}.{f.name}: InitVar is not supported (use @dataclass)")
        for f in fields:
            if not f.init or f.kw_only is True:
                raise TypeError(f"@record {cls.__qualname__}.{f.name}: init=False and kw_only are not supported")
        self.cls = cls
        self.names = frozenset(f.name for f in fields)
        # In the order of the compiled __init__'s parameters: (name, default, default_factory).
        self.params = tuple((f.name, f.default, f.default_factory) for f in fields)
        self.required = [f.name for f in fields if f.default is MISSING and f.default_factory is MISSING]
        self.repr_names = tuple(f.name for f in fields if f.repr)
        self.compare_names = tuple(f.name for f in fields if f.compare)
        self.hash_names = tuple(f.name for f in fields if (f.compare if f.hash is None else f.hash))


def _init(self: Any, /, *args: Any, **kwargs: Any) -> None:
    spec: _Spec = type(self).__record_spec__
    params = spec.params
    where = f"{type(self).__qualname__}.__init__()"
    if len(args) > len(params):
        most, least = len(params) + 1, len(spec.required) + 1
        takes = f"from {least} to {most}" if least < most else str(most)
        given = f"{len(args) + 1} {'was' if len(args) == 0 else 'were'} given"
        raise TypeError(f"{where} takes {takes} positional argument{'s' if most > 1 else ''} but {given}")
    setter = object.__setattr__
    for i, (name, default, factory) in enumerate(params):
        if i < len(args):
            if name in kwargs:
                raise TypeError(f"{where} got multiple values for argument '{name}'")
            setter(self, name, args[i])
        elif name in kwargs:
            setter(self, name, kwargs.pop(name))
        elif default is not MISSING:
            setter(self, name, default)
        elif factory is not MISSING:
            setter(self, name, factory())
        else:
            # Required fields come first in a dataclass: this one and those after it not given are missing.
            missing = [n for n in spec.required[spec.required.index(name) :] if n not in kwargs]
            plural = "s" if len(missing) > 1 else ""
            raise TypeError(f"{where} missing {len(missing)} required positional argument{plural}: {_quoted(missing)}")
    if kwargs:  # what is left was not a field (a field given by keyword was taken out above)
        raise TypeError(f"{where} got an unexpected keyword argument '{next(iter(kwargs))}'")
    post_init = getattr(self, "__post_init__", None)  # looked up now: a subclass may have its own
    if post_init is not None:
        post_init()


def _quoted(names: list[str]) -> str:
    """As Python words it: 'a'; 'a' and 'b'; 'a', 'b', and 'c'."""
    quoted = [f"'{n}'" for n in names]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def _repr(self: Any) -> str:
    names = type(self).__record_spec__.repr_names
    return f"{type(self).__qualname__}(" + ", ".join([f"{n}={getattr(self, n)!r}" for n in names]) + ")"


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    names = type(self).__record_spec__.compare_names
    return tuple([getattr(self, n) for n in names]) == tuple([getattr(other, n) for n in names])


def _hash(self: Any) -> int:
    return hash(tuple([getattr(self, n) for n in type(self).__record_spec__.hash_names]))


def _setattr(self: Any, name: str, value: Any) -> None:
    spec: _Spec = type(self).__record_spec__
    if type(self) is spec.cls or name in spec.names:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")
    super(spec.cls, self).__setattr__(name, value)  # a subclass's own attribute, as a frozen dataclass allows


def _delattr(self: Any, name: str) -> None:
    spec: _Spec = type(self).__record_spec__
    if type(self) is spec.cls or name in spec.names:
        raise FrozenInstanceError(f"cannot delete field {name!r}")
    super(spec.cls, self).__delattr__(name)


class _Signature:
    """``inspect.signature(SomeRecord)``: the fields as parameters, made when first asked for (building it for
    every class at import would cost what the records save), then kept on the class in the descriptor's place."""

    def __get__(self, instance: Any, owner: type) -> Any:
        signature = self._make(owner)
        type.__setattr__(owner, "__signature__", signature)
        return signature

    @staticmethod
    def _make(owner: type) -> Any:
        import inspect

        spec: _Spec = owner.__record_spec__
        annotations = {f.name: f.type for f in dataclasses.fields(owner)}
        # What dataclass shows for a default_factory ("<factory>").
        factory_mark = getattr(dataclasses, "_HAS_DEFAULT_FACTORY", "<factory>")

        def default_of(default: Any, factory: Any) -> Any:
            if default is not MISSING:
                return default
            return inspect.Parameter.empty if factory is MISSING else factory_mark

        parameters = [
            inspect.Parameter(
                name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=default_of(default, factory),
                annotation=annotations[name],
            )
            for name, default, factory in spec.params
        ]
        return inspect.Signature(parameters, return_annotation=None)


_SIGNATURE = _Signature()  # one descriptor for every record: it reads the class it is asked through


def record(cls: T) -> T:
    """Make ``cls`` an immutable dataclass, as ``@dataclass(frozen=True)`` does, without compiling any code."""
    for name in ("__setattr__", "__delattr__"):
        if name in cls.__dict__:  # as @dataclass(frozen=True) refuses
            raise TypeError(f"Cannot overwrite attribute {name} in class {cls.__name__}")
    if "__init__" in cls.__dict__:  # @dataclass would keep it; a record's __init__ is always the shared one
        raise TypeError(
            f"@record {cls.__qualname__}: a record makes its own __init__ (use __post_init__, or @dataclass)"
        )
    # As @dataclass: a __hash__ of the class's own stays, one Python set to None for an __eq__ of its own does not.
    own_hash = cls.__dict__.get("__hash__", MISSING)
    keep_hash = not (own_hash is MISSING or (own_hash is None and "__eq__" in cls.__dict__))
    own = {name for name in ("__repr__", "__eq__") if name in cls.__dict__}
    # Not frozen, no init, repr or eq: dataclass then compiles nothing; the shared methods take their place.
    cls = dataclasses.dataclass(cls, init=False, repr=False, eq=False)
    cls.__record_spec__ = _Spec(cls)
    # What the class is, for dataclass's checks (a @dataclass(frozen=True) may subclass a record) and for readers.
    params = cls.__dataclass_params__
    for flag in ("init", "repr", "eq", "frozen"):
        setattr(params, flag, True)
    cls.__signature__ = _SIGNATURE
    cls.__init__ = _init
    cls.__setattr__ = _setattr
    cls.__delattr__ = _delattr
    if "__repr__" not in own:
        cls.__repr__ = _repr
    if "__eq__" not in own:
        cls.__eq__ = _eq
    if not keep_hash:
        cls.__hash__ = _hash
    return cls
