"""`@client.metered("report.generate")` and `with client.metered(...) as m:`: one event per call,
with outcome, duration and an optional quantity. Metering never breaks the metered code: a call
without a customer is counted in `stats.unattributed` and logged, not raised."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aforo_sdk import _context

log = logging.getLogger("aforo_sdk")


@dataclass
class Measurement:
    """What a `with` block can add before it ends."""

    customer: str | None
    data: dict[str, Any] = field(default_factory=dict)
    quantity: Any = None
    started: float = field(default_factory=time.perf_counter)


class Metered:
    def __init__(self, client: Any, type: str, customer: str | Callable[..., str | None] | None,
                 data: Mapping[str, Any] | None, quantity: Any):
        self._client = client
        self._type = type
        self._customer = customer
        self._data = dict(data or {})
        self._quantity = quantity
        self._open: list[Measurement] = []  # a stack, so one Metered object can be nested

    # --- emitting ---------------------------------------------------------------------------
    def _emit(self, m: Measurement, error: BaseException | None, what: str) -> None:
        customer = m.customer or _context.current().customer
        if not customer:
            self._client._unattributed(what)
            return
        data = {**self._data, **m.data, "outcome": "error" if error else "ok",
                "duration_ms": round((time.perf_counter() - m.started) * 1000, 3)}
        if error is not None:
            data["error"] = type(error).__name__
        if m.quantity is not None:
            data["quantity"] = m.quantity
        try:
            self._client.meter(self._type, customer, data)
        except (ValueError, TypeError, RuntimeError) as exc:  # never into the caller's code path
            log.error("could not meter %s: %s", what, exc)

    def _customer_for(self, args: tuple, kwargs: dict) -> str | None:
        c = self._customer
        return c(*args, **kwargs) if callable(c) else c

    def _done(self, m: Measurement, result: Any, what: str) -> Any:
        q = self._quantity
        m.quantity = q(result) if callable(q) else q
        self._emit(m, None, what)
        return result

    # --- decorator --------------------------------------------------------------------------
    def __call__(self, fn: Callable) -> Callable:
        what = getattr(fn, "__qualname__", repr(fn))
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                m = Measurement(self._customer_for(args, kwargs), {"function": what})
                with self._on_error(m, what):
                    result = await fn(*args, **kwargs)
                return self._done(m, result, what)
            return run_async

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            m = Measurement(self._customer_for(args, kwargs), {"function": what})
            with self._on_error(m, what):
                result = fn(*args, **kwargs)
            return self._done(m, result, what)
        return run

    @contextlib.contextmanager
    def _on_error(self, m: Measurement, what: str) -> Iterator[None]:
        try:
            yield
        except BaseException as exc:
            self._emit(m, exc, what)
            raise

    # --- context manager --------------------------------------------------------------------
    def __enter__(self) -> Measurement:
        customer = self._customer if isinstance(self._customer, str) else None
        m = Measurement(customer, quantity=None if callable(self._quantity) else self._quantity)
        self._open.append(m)
        return m

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        self._emit(self._open.pop(), exc, self._type)

    async def __aenter__(self) -> Measurement:
        return self.__enter__()

    async def __aexit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        self.__exit__(exc_type, exc, tb)
