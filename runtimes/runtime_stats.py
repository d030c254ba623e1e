"""What a runtime has done so far, as one immutable record: ``Runtime.stats``.

Continual adaptation can do nothing without failing (every frame too unsure to learn from, or the
collapse guard resetting the head): these numbers are how a caller, a log line or ``predict --json``
sees it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RuntimeStats:
    frames: int  # images predicted, by every predict() and stream() call
    updates: int  # adaptation steps applied (continual and episodic)
    skipped_unconfident: int  # frames too unsure to learn from (continual)
    skipped_nonfinite: int  # frames or steps dropped for non-finite values
    resets: int  # collapse-guard resets to the deployed head
    mode: str  # "off" (no TTA config), "continual" or "episodic"
    adapted_frames: int = 0  # frames continual adaptation has seen
    episodes: int = 0  # episodic adaptations (one per image)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.to_dict().items())
