"""Progress bars that stay readable in a log file.

On a terminal a bar redraws itself several times a second. Redirected to a file, every redraw is a new frame
(a 10-minute CPU run wrote 150 KB of them), so when stderr is not a terminal a bar draws at most one frame every
``HFGEN_PROGRESS_SECONDS`` seconds (default 10): a line a person can read, with the same figures.
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

#: seconds between frames when stderr is not a terminal
DEFAULT_LOG_SECONDS = 10.0


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, drawing at most one frame every ``HFGEN_PROGRESS_SECONDS`` seconds when
    stderr is not a terminal."""
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", float(os.environ.get("HFGEN_PROGRESS_SECONDS", DEFAULT_LOG_SECONDS)))
        kwargs.setdefault("maxinterval", kwargs["mininterval"])
    return tqdm(iterable, **kwargs)
