"""The garbage collector's settings for a long-running mesh process.

`settle()` is called once the process has built what it keeps for its lifetime (modules,
config, clients, the app): a full collection, then `gc.freeze()`, so later full
collections walk only what came after. Python's thresholds stay: a Kafka bridge with a
young threshold of 10,000 spent less CPU per event, but its added p99 was higher in 5 of
6 alternated pairs (docs/bridge.md, "The collector").
"""

from __future__ import annotations

import gc


def settle() -> None:
    gc.collect()
    gc.freeze()
