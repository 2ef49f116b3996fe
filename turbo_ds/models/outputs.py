"""Model and task outputs: dicts with attribute access.

DeepSpeed ZeRO-3 gathers a module's parameters in hooks around its ``forward`` and, for backward, hooks
the tensors that ``forward`` returns; it finds them by walking tuples, lists and dicts (not dataclasses).
So every module here is entered through ``forward`` and returns one of these: ``out.tokens`` reads the
same entry as ``out["tokens"]``, and a tensor DeepSpeed replaces in place is the one attributes see.
"""

from __future__ import annotations

from typing import Any


class Output(dict):
    """A ``dict`` whose keys are also attributes (subclasses name their fields in ``__init__``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}") from e

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __reduce__(self):  # pickle as the subclass, without calling its __init__
        return (_rebuild, (type(self), dict(self)))


def _rebuild(cls: type, items: dict) -> Output:
    obj = dict.__new__(cls)
    dict.update(obj, items)
    return obj
