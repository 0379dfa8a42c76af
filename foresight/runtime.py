"""What keeps a run bounded, whatever process it runs in.

`StopFlag` is a run's Stop. On ZeroGPU the run itself happens in a forked process (`spaces.GPU`
puts the call's arguments through a pickling queue into a worker it forks once and reuses, and
streams the events back the same way), so Stop must cross a process boundary: a
`threading.Event` cannot be pickled at all, and the one thing `spaces` carries back is a closed
generator, which its worker notices only at the run's next event. A StopFlag is a path: setting it
creates the file, and every token and denoising step asks whether the file exists (a `stat`, a few
microseconds), in whichever process it runs.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

STOP_DIR = Path(tempfile.gettempdir()) / "foresight-stops"


class StopFlag:
    """A run's Stop, as a file: `set()` in one process is seen by `is_set()` in another. Pickles
    as its path. Used wherever a `threading.Event` would be (`set`, `is_set`)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else STOP_DIR / f"{os.getpid()}-{uuid.uuid4().hex}"
        self._seen = False

    def set(self) -> None:
        self._seen = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()

    def is_set(self) -> bool:
        if not self._seen:
            self._seen = self.path.exists()
        return self._seen

    def discard(self) -> None:
        """The run has ended: its file goes (a flag set later makes it again)."""
        self.path.unlink(missing_ok=True)

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.path, self._seen = state["path"], False

    def __repr__(self) -> str:
        return f"StopFlag({str(self.path)!r}, set={self.is_set()})"
