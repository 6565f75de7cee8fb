"""Renamed arguments keep working for one release, with a ``DeprecationWarning`` naming the new name."""

from __future__ import annotations

import functools
import inspect
import warnings


def renamed_kwargs(**renames: str):
    """Decorator: accept each old keyword ``old=new`` as ``new``, warning once per call.

    Passing both the old and the new name is a TypeError. The vocabulary of the package (see the
    package docstring) lists every rename.
    """

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{fn.__name__}() got both {old!r} (deprecated) and {new!r}; pass only {new!r}")
                    warnings.warn(
                        f"{fn.__name__}(): the argument {old!r} is deprecated, use {new!r}",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        wrapper.__signature__ = inspect.signature(fn)
        wrapper._renamed_kwargs = dict(renames)
        return wrapper

    return decorate
