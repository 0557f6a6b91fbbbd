"""Exact pricing: P(q), the price of a billing-period total q, under each charge model.

The pipeline prices an event by its marginal revenue P(after) - P(before) on the running total
of the event's group, using the very P that prices the period. So for any event sequence the
marginals add up to the period price exactly, with no reconciliation step.

All arithmetic is Decimal in a private context (`_EXACT`): 50 significant digits with Inexact
trapped. A result is therefore exact or an exception (decimal.Inexact), never silently rounded;
50 digits hold e.g. 10^18 units at a price with 12 decimals with ample room.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import (
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)
from typing import Any, ClassVar

_EXACT = Context(prec=50, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])
EXACT = _EXACT  # for other exact money arithmetic (the bill run's allowances and discounts)
_ZERO = Decimal(0)

Group = Mapping[str, str]
GroupKey = tuple[str | None, ...]


class PricingError(ValueError):
    """An invalid charge definition; the message names the model and the offending field."""


class Unpriceable(LookupError):
    """A valid charge cannot price this event (no matrix row, or above a capped last tier)."""


# --- reading a charge definition ---------------------------------------------------------------

def _decimal(value: object, name: str) -> Decimal:
    # A float may already be inexact (0.1 is not 1/10), so it is refused rather than converted.
    if isinstance(value, float):
        raise TypeError(f"{name} is the float {value!r}; write amounts as strings or ints "
                        f"(e.g. \"{value}\") so they stay exact")
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        raise PricingError(f"{name} must be a number as a string, int or Decimal, got {value!r}")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise PricingError(f"{name} is not a number: {value!r}") from None
    if not number.is_finite():
        raise PricingError(f"{name} must be finite, got {value!r}")
    return number


def _optional(d: Mapping, key: str, prefix: str = "") -> Decimal | None:
    """A non-negative amount, or None when missing or null."""
    value = d.get(key)
    if value is None:
        return None
    number = _decimal(value, prefix + key)
    if number < 0:
        raise PricingError(f"{prefix}{key} must not be negative, got {value!r}")
    return number


def _required(d: Mapping, key: str, prefix: str = "") -> Decimal:
    number = _optional(d, key, prefix)
    if number is None:
        raise PricingError(f"{prefix}{key} is required")
    return number


def _zero_default(d: Mapping, key: str, prefix: str = "") -> Decimal:
    number = _optional(d, key, prefix)
    return _ZERO if number is None else number


def _mapping(value: object, name: str, allowed: frozenset[str]) -> Mapping:
    # Nested objects belong to pricing alone, so an unknown key there is a typo worth reporting.
    if not isinstance(value, Mapping):
        raise PricingError(f"{name} must be an object, got {value!r}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise PricingError(f"{name} has unknown field(s) {unknown}; expected {sorted(allowed)}")
    return value


def _list(d: Mapping, key: str) -> Sequence:
    value = d.get(key)
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise PricingError(f"{key} must be a list, got {value!r}")
    return value


def _tiers(d: Mapping, allowed: frozenset[str]) -> tuple[list[Mapping], tuple[Decimal, ...]]:
    """The tiers and their finite upper bounds: strictly ascending, only the last may be null."""
    tiers = [_mapping(t, f"tiers[{i}]", allowed) for i, t in enumerate(_list(d, "tiers"))]
    if not tiers:
        raise PricingError("tiers must not be empty")
    bounds: list[Decimal] = []
    for i, tier in enumerate(tiers):
        up_to = _optional(tier, "up_to", f"tiers[{i}].")
        if up_to is None:
            if i != len(tiers) - 1:
                raise PricingError(f"tiers[{i}].up_to is null, but only the last tier may be "
                                   "open-ended")
            break
        below = bounds[-1] if bounds else _ZERO
        if up_to <= below:
            raise PricingError(f"tiers[{i}].up_to must be greater than {below}, got {up_to}")
        bounds.append(up_to)
    return tiers, tuple(bounds)


def _per_tier(tiers: list[Mapping], key: str,
              read: Callable[[Mapping, str, str], Decimal] = _required) -> tuple[Decimal, ...]:
    return tuple(read(tier, key, f"tiers[{i}].") for i, tier in enumerate(tiers))


def _tier_of(bounds: tuple[Decimal, ...], tier_count: int, q: Decimal) -> int:
    i = bisect_left(bounds, q)  # the first tier with q <= up_to: bounds are inclusive
    if i == tier_count:
        raise Unpriceable(f"quantity {q} is above the last tier (up_to {bounds[-1]})")
    return i


# --- the models ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Charge:
    """A parsed, validated charge; build one with parse_charge."""

    model: ClassVar[str]

    @classmethod
    def _parse(cls, d: Mapping) -> Charge:
        raise NotImplementedError

    def _price(self, q: Decimal, group: Group | None) -> Decimal:
        """P(q) for q >= 0, evaluated inside the exact context."""
        raise NotImplementedError

    def _parts(self, q: Decimal, group: Group | None) -> list[Part]:
        """P(q) as the parts an invoice shows (units per tier, fees); they add up to P(q)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Part:
    """One piece of a period price: `quantity` x `unit_price` = `amount`."""

    label: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal


def _part(label: str, quantity: Decimal, unit_price: Decimal) -> Part:
    return Part(label, quantity, unit_price, quantity * unit_price)


def _range(below: Decimal, up_to: Decimal | None) -> str:
    return f"{below} to {up_to}" if up_to is not None else f"above {below}"


def _span(bounds: tuple[Decimal, ...], tier_count: int, q: Decimal) -> tuple[int, str]:
    """The tier q falls in and its range, for a label."""
    i = _tier_of(bounds, tier_count, q)
    return i, _range(bounds[i - 1] if i else _ZERO, bounds[i] if i < len(bounds) else None)


@dataclass(frozen=True)
class FlatCharge(Charge):
    model = "flat"
    amount: Decimal

    @classmethod
    def _parse(cls, d: Mapping) -> FlatCharge:
        return cls(_required(d, "amount"))

    def _price(self, q: Decimal, group: Group | None) -> Decimal:
        return self.amount if q > 0 else _ZERO

    def _parts(self, q: Decimal, group: Group | None) -> list[Part]:
        return [_part("flat fee", Decimal(1), self.amount)] if q > 0 else []


@dataclass(frozen=True)
class PerUnitCharge(Charge):
    model = "per_unit"
    unit_price: Decimal

    @classmethod
    def _parse(cls, d: Mapping) -> PerUnitCharge:
        return cls(_required(d, "unit_price"))

    def _price(self, q: Decimal, group: Group | None) -> Decimal:
        return q * self.unit_price

    def _parts(self, q: Decimal, group: Group | None) -> list[Part]:
        return [_part("units", q, self.unit_price)]


@dataclass(frozen=True)
class GraduatedCharge(Charge):
    model = "graduated"
    bounds: tuple[Decimal, ...]
    unit_prices: tuple[Decimal, ...]
    # For q in tier i: P(q) = P(below) + flat_fee + (q - below) * unit_price, where `below` is the
    # previous up_to. Everything but q * unit_price is a constant of the tier, kept in bases[i].
    bases: tuple[Decimal, ...]
    flat_fees: tuple[Decimal, ...]

    @classmethod
    def _parse(cls, d: Mapping) -> GraduatedCharge:
        tiers, bounds = _tiers(d, frozenset({"up_to", "unit_price", "flat_fee"}))
        unit_prices = _per_tier(tiers, "unit_price")
        flat_fees = _per_tier(tiers, "flat_fee", _zero_default)
        bases = []
        below = price_below = _ZERO  # the previous tier's up_to and P there
        for i, (unit, fee) in enumerate(zip(unit_prices, flat_fees, strict=True)):
            bases.append(price_below + fee - below * unit)
            if i < len(bounds):
                price_below += fee + (bounds[i] - below) * unit
                below = bounds[i]
        return cls(bounds, unit_prices, tuple(bases), flat_fees)

    def _price(self, q: Decimal, group: Group | None) -> Decimal:
        if q == 0:
            return _ZERO  # the first tier's flat fee is due only once usage begins
        i = _tier_of(self.bounds, len(self.unit_prices), q)
        return self.bases[i] + q * self.unit_prices[i]

    def _parts(self, q: Decimal, group: Group | None) -> list[Part]:
        if q == 0:
            return []
        last = _tier_of(self.bounds, len(self.unit_prices), q)
        parts, below = [], _ZERO
        for i in range(last + 1):
            up_to = self.bounds[i] if i < len(self.bounds) else None
            units = (q if i == last else up_to) - below
            parts.append(_part(f"tier {i + 1} ({_range(below, up_to)})", units, self.unit_prices[i]))
            if self.flat_fees[i]:
                parts.append(_part(f"tier {i + 1} flat fee", Decimal(1), self.flat_fees[i]))
            below = up_to
        return parts


@dataclass(frozen=True)
class VolumeCharge(Charge):
    model = "volume"
    bounds: tuple[Decimal, ...]
    unit_prices: tuple[Decimal, ...]
    flat_fees: tuple[Decimal, ...]

    @classmethod
    def _parse(cls, d: Mapping) -> VolumeCharge:
        tiers, bounds = _tiers(d, frozenset({"up_to", "unit_price", "flat_fee"}))
        return cls(bounds, _per_tier(tiers, "unit_price"),
                   _per_tier(tiers, "flat_fee", _zero_default))

    def _price(self, q: Decimal, group: Group | None) -> Decimal:
        if q == 0:
            return _ZERO
        i = _tier_of(self.bounds, len(self.unit_prices), q)
        return q * self.unit_prices[i] + self.flat_fees[i]

    def _parts(self, q: Decimal, group: Group | None) -> list[Part]:
        if q == 0:
            return []
        i, span = _span(self.bounds, len(self.unit_prices), q)
        parts = [_part(f"all units at tier {i + 1} ({span})", q, self.unit_prices[i])]
        if self.flat_fees[i]:
            parts.append(_part(f"tier {i + 1} flat fee", Decimal(1), self.flat_fees[i]))
        return parts


@dataclass(frozen=True)
class PackageCharge(Charge):
    model = "package"
    package_size: Decimal
    package_price: Decimal
    free_units: Decimal

    @classmethod
    def _parse(cls, d: Mapping) -> PackageCharge:
        size = _required(d, "package_size")
        if size == 0:
            raise PricingError("package_size must be greater than 0")
        return cls(size, _required(d, "package_price"), _zero_default(d, "free_units"))

    def _packages(self, q: Decimal) -> Decimal:
        # divmod is exact for Decimal; true division could round (1/3) and ceil the wrong value.
        packages, rest = divmod(max(q - self.free_units, _ZERO), self.package_size)
        return packages + (1 if rest else 0)

    def _price(self, q: Decimal, group: Group | None) -> Decimal:
        return self._packages(q) * self.package_price

    def _parts(self, q: Decimal, group: Group | None) -> list[Part]:
        packages = self._packages(q)
        if not packages:
            return []
        free = f" after {self.free_units} free units" if self.free_units else ""
        return [_part(f"packages of {self.package_size}{free}", packages, self.package_price)]


@dataclass(frozen=True)
class StairstepCharge(Charge):
    model = "stairstep"
    bounds: tuple[Decimal, ...]
    prices: tuple[Decimal, ...]

    @classmethod
    def _parse(cls, d: Mapping) -> StairstepCharge:
        tiers, bounds = _tiers(d, frozenset({"up_to", "price"}))
        return cls(bounds, _per_tier(tiers, "price"))

    def _price(self, q: Decimal, group: Group | None) -> Decimal:
        if q == 0:
            return _ZERO
        return self.prices[_tier_of(self.bounds, len(self.prices), q)]

    def _parts(self, q: Decimal, group: Group | None) -> list[Part]:
        if q == 0:
            return []
        i, span = _span(self.bounds, len(self.prices), q)
        return [_part(f"step {i + 1} ({span})", Decimal(1), self.prices[i])]


@dataclass(frozen=True)
class PercentageCharge(Charge):
    model = "percentage"
    rate: Decimal  # in percent
    fixed_fee: Decimal
    min_per_event: Decimal | None
    max_per_event: Decimal | None

    @classmethod
    def _parse(cls, d: Mapping) -> PercentageCharge:
        low, high = _optional(d, "min_per_event"), _optional(d, "max_per_event")
        if low is not None and high is not None and low > high:
            raise PricingError(f"min_per_event ({low}) is greater than max_per_event ({high})")
        return cls(_required(d, "rate"), _zero_default(d, "fixed_fee"), low, high)

    def _price(self, q: Decimal, group: Group | None) -> Decimal:
        # A clamp per event does not distribute over a sum, so there is no P(total) to give.
        raise TypeError("a percentage charge is priced per event: use event_fee or marginal")

    _parts = _price

    def _fee(self, amount: Decimal) -> Decimal:
        fee = amount * self.rate / 100 + self.fixed_fee
        if self.min_per_event is not None:
            fee = max(fee, self.min_per_event)
        if self.max_per_event is not None:
            fee = min(fee, self.max_per_event)
        return fee


@dataclass(frozen=True)
class MatrixCharge(Charge):
    model = "matrix"
    dimensions: tuple[str, ...]
    prices: Mapping[GroupKey, Decimal] = field(hash=False)
    default_unit_price: Decimal | None

    @classmethod
    def _parse(cls, d: Mapping) -> MatrixCharge:
        dimensions = tuple(_list(d, "dimensions"))
        if not dimensions or not all(isinstance(n, str) and n for n in dimensions):
            raise PricingError(f"dimensions must be a non-empty list of names, got {dimensions!r}")
        if len(set(dimensions)) != len(dimensions):
            raise PricingError(f"dimensions has duplicate names: {list(dimensions)}")
        prices: dict[GroupKey, Decimal] = {}
        for i, row in enumerate(_list(d, "prices")):
            row = _mapping(row, f"prices[{i}]", frozenset({"match", "unit_price"}))
            match = _mapping(row.get("match"), f"prices[{i}].match", frozenset(dimensions))
            key = tuple(match.get(n) for n in dimensions)
            if not all(isinstance(v, str) for v in key):
                raise PricingError(f"prices[{i}].match must give a string for each of "
                                   f"{list(dimensions)}, got {dict(match)!r}")
            if key in prices:
                raise PricingError(f"prices[{i}].match repeats an earlier row: {dict(match)!r}")
            prices[key] = _required(row, "unit_price", f"prices[{i}].")
        default = _optional(d, "default_unit_price")
        if not prices and default is None:
            raise PricingError("needs at least one row in prices or a default_unit_price")
        return cls(dimensions, prices, default)

    def _price(self, q: Decimal, group: Group | None) -> Decimal:
        # Looked up even for q == 0: an event whose dimensions have no price is unresolved,
        # whatever its quantity.
        return q * self._unit(group)

    def _unit(self, group: Group | None) -> Decimal:
        key = group_key(self, group)
        unit = self.prices.get(key, self.default_unit_price)
        if unit is None:
            values = ", ".join(f"{n}={v!r}" for n, v in zip(self.dimensions, key, strict=True))
            raise Unpriceable(f"matrix charge has no price for {values} and no default_unit_price")
        return unit

    def _parts(self, q: Decimal, group: Group | None) -> list[Part]:
        key = group_key(self, group)
        label = ", ".join(f"{n}={v}" for n, v in zip(self.dimensions, key, strict=True))
        return [_part(label, q, self._unit(group))]


_MODELS: dict[str, type[Charge]] = {
    c.model: c for c in (FlatCharge, PerUnitCharge, GraduatedCharge, VolumeCharge, PackageCharge,
                         StairstepCharge, PercentageCharge, MatrixCharge)
}


# --- the API the pipeline calls --------------------------------------------------------------

def parse_charge(d: Mapping[str, Any]) -> Charge:
    """Validate a charge as it appears in a catalog file and precompute what pricing needs.

    Keys other than the model's own are left to the catalog (ids, names, metrics); unknown keys
    inside tiers and matrix rows are rejected. Raises PricingError, or TypeError for a float.
    """
    if not isinstance(d, Mapping):
        raise PricingError(f"a charge must be an object, got {d!r}")
    model = d.get("model")
    cls = _MODELS.get(model) if isinstance(model, str) else None
    if cls is None:
        raise PricingError(f"unknown pricing model {model!r}; expected one of {sorted(_MODELS)}")
    try:
        with localcontext(_EXACT):
            return cls._parse(d)
    except (PricingError, TypeError) as exc:
        raise type(exc)(f"{model} charge: {exc}") from None


def group_key(charge: Charge, dims: Group | None) -> GroupKey:
    """The running-total group of an event: its values of a matrix charge's dimensions, in
    order (None where absent); () for every other model, which keeps a single total."""
    if not isinstance(charge, MatrixCharge):
        return ()
    dims = dims or {}
    return tuple(dims.get(n) for n in charge.dimensions)


def _period(charge: Charge, total: Decimal, group: Group | None) -> Decimal:
    if total < 0:
        raise ValueError(f"cannot price a negative period total ({total})")
    return charge._price(total, group)


def period_price(charge: Charge, total: Decimal, group: Group | None = None) -> Decimal:
    """P(total) for one group (a matrix charge needs the group's dimension values)."""
    with localcontext(_EXACT):
        return _period(charge, total, group)


def price_parts(charge: Charge, total: Decimal, group: Group | None = None) -> list[Part]:
    """P(total) as an invoice shows it: units per tier, packages, steps, fees. The parts' amounts
    add up to period_price(charge, total, group) (tests check every model)."""
    with localcontext(_EXACT):
        if total < 0:
            raise ValueError(f"cannot price a negative period total ({total})")
        return charge._parts(total, group)


def event_fee(charge: Charge, amount: Decimal) -> Decimal:
    """A percentage charge's fee for one event of this amount, clamped to the per-event bounds."""
    if not isinstance(charge, PercentageCharge):
        raise TypeError(f"event_fee applies to percentage charges, not {charge.model}")
    with localcontext(_EXACT):
        return charge._fee(amount)


def marginal(charge: Charge, before: Decimal, after: Decimal, group: Group | None = None,
             amount: Decimal | None = None) -> Decimal:
    """An event's revenue: P(after) - P(before) on its group's running total, or for a
    percentage charge the event's own fee on `amount`."""
    if isinstance(charge, PercentageCharge):
        if amount is None:
            raise TypeError("a percentage charge needs the event's amount")
        return event_fee(charge, amount)
    with localcontext(_EXACT):
        return _period(charge, after, group) - _period(charge, before, group)


def price_sequence(charge: Charge, events: Iterable[tuple[Decimal, Group | None]],
                   ) -> tuple[Decimal, list[Decimal]]:
    """Price (quantity, dimensions) events in order as the pipeline does: (total, marginals).

    The total is priced afresh from each group's final total, so it equals sum(marginals) only
    because the invariant holds, not by construction (for percentage it is the sum of the fees).
    """
    groups: dict[GroupKey, tuple[Decimal, Group | None]] = {}
    marginals: list[Decimal] = []
    with localcontext(_EXACT):
        for quantity, dims in events:
            key = group_key(charge, dims)
            before = groups.get(key, (_ZERO, dims))[0]
            after = before + quantity
            marginals.append(marginal(charge, before, after, dims, quantity))
            groups[key] = (after, dims)
        if isinstance(charge, PercentageCharge):
            return sum(marginals, _ZERO), marginals
        return sum((_period(charge, q, dims) for q, dims in groups.values()), _ZERO), marginals
