"""`DataError`: the one exception of hfgen.data, for every problem a user can fix (a missing file, a corrupt image,
a wrong channel count, a missing split); its message names the offending file, row or value and says what was
expected."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset or image that cannot be used as given; the message names it and says what was expected."""
