"""Who is being metered right now: the customer (an event's subject) and the agent, carried in a
context variable so that middleware, decorators and AI instrumentation deep in a call stack agree
without passing them around. Works across threads started with copied contexts and in asyncio."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class Scope:
    """Mutable on purpose: a request handler that learns the customer late (after authentication)
    calls set_customer(), and the middleware that opened the scope sees it when the request ends."""

    customer: str | None = None
    agent: str | None = None
    route: str | None = None


_current: ContextVar[Scope | None] = ContextVar("aforo_scope", default=None)


def current() -> Scope:
    return _current.get() or Scope()


@contextmanager
def context(customer: str | None = None, agent: str | None = None) -> Iterator[Scope]:
    """`with aforo_sdk.context(customer="cust-1", agent="support-bot"): ...` meters everything
    inside for that customer (unset values are inherited from the enclosing context)."""
    parent = current()
    token = _current.set(Scope(customer or parent.customer, agent or parent.agent, parent.route))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def _scope() -> Scope:
    scope = _current.get()
    if scope is None:
        scope = Scope()
        _current.set(scope)
    return scope


def set_customer(customer: str) -> None:
    """Name the customer of the current request or context from inside it."""
    _scope().customer = customer


def set_agent(agent: str) -> None:
    _scope().agent = agent


def set_route(route: str) -> None:
    """Report the route template from inside a framework the middleware cannot see into."""
    _scope().route = route


@contextmanager
def request_scope(scope: Scope) -> Iterator[Scope]:
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)
