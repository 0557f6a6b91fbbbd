"""The one Bytewax shell around a flow's stateful logic: per key, a state object and a step that
takes a batch of values and returns what to emit."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Generic, TypeVar

import bytewax.operators as op
from bytewax.operators import KeyedStream, StatefulBatchLogic

S = TypeVar("S")
V = TypeVar("V")
W = TypeVar("W")


class _Shell(StatefulBatchLogic[V, W, bytes], Generic[S, V, W]):
    def __init__(self, state: S, step: Callable[[S, list[V]], list[W]]):
        self._state = state
        self._step = step

    def on_batch(self, values: list[V]) -> tuple[list[W], bool]:
        return self._step(self._state, values), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        # Bytewax may serialise a snapshot after this key's next batch has changed the state, so
        # it gets a copy: the pickle it would have made anyway.
        return pickle.dumps(self._state, protocol=pickle.HIGHEST_PROTOCOL)


def stateful(step_id: str, up: KeyedStream[V], new: Callable[[], S],
             step: Callable[[S, list[V]], list[W]]) -> KeyedStream[W]:
    """Each key's state (`new()` at first, else its last snapshot) through `step`, batch by batch."""
    def build(resumed: bytes | S | None) -> _Shell[S, V, W]:
        if resumed is None:
            return _Shell(new(), step)
        # snapshots taken before they were pickled copies are the state itself
        return _Shell(pickle.loads(resumed) if isinstance(resumed, bytes) else resumed, step)

    return op.stateful_batch(step_id, up, build)



