"""Deterministic fake ServiceTitan records: the same seed gives the same records, byte for byte.

Timestamps come from a fixed window (2022-01-01 to 2025-01-01 UTC), never from the wall clock,
so the generated data is in the past of any sandbox and identical between runs.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow_provider_servicetitan.sandbox.timestamps import format_ms, to_ms

DATA_START_MS = to_ms(datetime(2022, 1, 1, tzinfo=UTC))
DATA_END_MS = to_ms(datetime(2025, 1, 1, tzinfo=UTC))
_ACTIVE_SHARE = 0.9
_DELETED_SHARE = 0.02
_HOUR_MS = 3_600_000

References = Mapping[str, Sequence[int]]
"""Ids of the records generated so far for a tenant, by resource: what new records may point at."""

BodyGenerator = Callable[[random.Random, References], dict[str, Any]]


@dataclass(frozen=True)
class Record:
    """One record: the fields every resource has, plus its resource-specific ``body``."""

    id: int
    created_ms: int
    modified_ms: int
    active: bool
    deleted: bool
    body: Mapping[str, Any]

    def to_api(self, *, export: bool) -> dict[str, Any]:
        """The record as the API serves it; export feeds add the ``deleted`` flag."""
        payload = {
            "id": self.id,
            **self.body,
            "active": self.active,
            "createdOn": format_ms(self.created_ms),
            "modifiedOn": format_ms(self.modified_ms),
        }
        if export:
            payload["deleted"] = self.deleted
        return payload

    def truth(self) -> dict[str, Any]:
        """What the truth endpoint tells about the record."""
        return {
            "id": self.id,
            "createdOn": format_ms(self.created_ms),
            "modifiedOn": format_ms(self.modified_ms),
            "active": self.active,
            "deleted": self.deleted,
        }


_FIRST_NAMES = (
    "James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda",
    "David", "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica",
)  # fmt: skip
_LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
    "Rodriguez", "Martinez", "Hernandez", "Lopez", "Wilson", "Anderson", "Thomas", "Taylor",
)  # fmt: skip
_BUSINESS_SUFFIXES = ("Holdings", "Properties", "Dental", "Bakery", "Realty", "Partners", "Market", "Fitness")
_STREETS = ("Maple", "Oak", "Cedar", "Pine", "Elm", "Washington", "Lake", "Hill", "Sunset", "Park", "Main")
_STREET_TYPES = ("St", "Ave", "Blvd", "Dr", "Ln", "Ct", "Way")
_CITIES = (
    ("Austin", "TX", "787"),
    ("Phoenix", "AZ", "850"),
    ("Denver", "CO", "802"),
    ("Tampa", "FL", "336"),
    ("Columbus", "OH", "432"),
    ("Sacramento", "CA", "958"),
    ("Raleigh", "NC", "276"),
    ("Nashville", "TN", "372"),
)
_LOCATION_KINDS = ("Home", "Office", "Rental", "Shop", "Warehouse")
_JOB_STATUSES = ("Scheduled", "Dispatched", "InProgress", "Hold", "Completed", "Canceled")
_PRIORITIES = ("Low", "Normal", "High", "Urgent")
_APPOINTMENT_STATUSES = ("Scheduled", "Dispatched", "Working", "Done", "Canceled")
_SKUS = (
    ("AC Tune-Up", 89.0),
    ("Capacitor Replacement", 245.0),
    ("Drain Cleaning", 199.0),
    ("Water Heater Flush", 149.0),
    ("Thermostat Install", 325.0),
    ("Service Call Fee", 79.0),
    ("Air Filter 16x25x1", 24.5),
)
_PAYMENT_TYPES = ("Cash", "Check", "Credit Card", "ACH")
_ROLES = ("Dispatcher", "CSR", "Manager", "Accountant", "Admin")
_BUSINESS_UNIT_IDS = (101, 102, 103, 104)
_SALES_TAX = 0.0825


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"


def _email(name: str, rng: random.Random) -> str:
    return f"{name.lower().replace(' ', '.')}{rng.randint(1, 99)}@example.com"


def _phone(rng: random.Random) -> str:
    return f"{rng.randint(201, 989)}555{rng.randint(0, 9999):04d}"


def _money(rng: random.Random, low: float, high: float) -> float:
    return round(rng.uniform(low, high), 2)


def _moment(rng: random.Random) -> str:
    return format_ms(rng.randrange(DATA_START_MS, DATA_END_MS))


def _address(rng: random.Random) -> dict[str, Any]:
    city, state, zip_prefix = rng.choice(_CITIES)
    return {
        "street": f"{rng.randint(100, 9999)} {rng.choice(_STREETS)} {rng.choice(_STREET_TYPES)}",
        "city": city,
        "state": state,
        "zip": f"{zip_prefix}{rng.randint(0, 99):02d}",
        "country": "USA",
    }


def _customer(rng: random.Random, refs: References) -> dict[str, Any]:
    commercial = rng.random() < 0.25
    name = f"{rng.choice(_LAST_NAMES)} {rng.choice(_BUSINESS_SUFFIXES)}" if commercial else _person(rng)
    return {
        "name": name,
        "type": "Commercial" if commercial else "Residential",
        "address": _address(rng),
        "email": _email(name, rng),
        "phoneNumber": _phone(rng),
        "balance": _money(rng, 0, 2500),
        "doNotMail": rng.random() < 0.1,
    }


def _location(rng: random.Random, refs: References) -> dict[str, Any]:
    return {
        "name": f"{rng.choice(_STREETS)} {rng.choice(_LOCATION_KINDS)}",
        "customerId": rng.choice(refs["customers"]),
        "address": _address(rng),
        "zoneId": rng.randint(1, 12),
    }


def _job(rng: random.Random, refs: References) -> dict[str, Any]:
    return {
        "jobNumber": str(rng.randint(100_000, 999_999)),
        "customerId": rng.choice(refs["customers"]),
        "locationId": rng.choice(refs["locations"]),
        "jobStatus": rng.choice(_JOB_STATUSES),
        "businessUnitId": rng.choice(_BUSINESS_UNIT_IDS),
        "jobTypeId": rng.randint(1, 20),
        "priority": rng.choice(_PRIORITIES),
        "summary": rng.choice(_SKUS)[0],
    }


def _appointment(rng: random.Random, refs: References) -> dict[str, Any]:
    start_ms = rng.randrange(DATA_START_MS, DATA_END_MS)
    return {
        "jobId": rng.choice(refs["jobs"]),
        "appointmentNumber": str(rng.randint(100_000, 999_999)),
        "start": format_ms(start_ms),
        "end": format_ms(start_ms + rng.randint(1, 4) * _HOUR_MS),
        "status": rng.choice(_APPOINTMENT_STATUSES),
    }


def _invoice(rng: random.Random, refs: References) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    for index in range(rng.randint(1, 4)):
        sku, price = rng.choice(_SKUS)
        quantity = rng.randint(1, 3)
        items.append({"id": index + 1, "skuName": sku, "quantity": quantity, "price": price, "total": quantity * price})
    sub_total = round(sum(item["total"] for item in items), 2)
    sales_tax = round(sub_total * _SALES_TAX, 2)
    total = round(sub_total + sales_tax, 2)
    return {
        "number": f"INV-{rng.randint(10_000, 99_999)}",
        "jobId": rng.choice(refs["jobs"]),
        "customerId": rng.choice(refs["customers"]),
        "invoiceDate": _moment(rng),
        "subTotal": sub_total,
        "salesTax": sales_tax,
        "total": total,
        "balance": round(total * rng.choice((0.0, 0.0, 0.5, 1.0)), 2),
        "items": items,
    }


def _payment(rng: random.Random, refs: References) -> dict[str, Any]:
    return {
        "invoiceId": rng.choice(refs["invoices"]),
        "amount": _money(rng, 20, 3000),
        "type": rng.choice(_PAYMENT_TYPES),
        "paidOn": _moment(rng),
        "memo": rng.choice(("", "Thank you", "Deposit", "Final payment")),
    }


def _technician(rng: random.Random, refs: References) -> dict[str, Any]:
    name = _person(rng)
    return {
        "name": name,
        "loginName": name.lower().replace(" ", "."),
        "email": _email(name, rng),
        "phoneNumber": _phone(rng),
        "businessUnitId": rng.choice(_BUSINESS_UNIT_IDS),
    }


def _employee(rng: random.Random, refs: References) -> dict[str, Any]:
    name = _person(rng)
    return {"name": name, "role": rng.choice(_ROLES), "email": _email(name, rng), "phoneNumber": _phone(rng)}


GENERATORS: dict[str, BodyGenerator] = {
    "customers": _customer,
    "locations": _location,
    "jobs": _job,
    "appointments": _appointment,
    "invoices": _invoice,
    "payments": _payment,
    "technicians": _technician,
    "employees": _employee,
}
"""Body generator of each resource, in dependency order (a resource only points at earlier ones)."""


def next_id(rng: random.Random, last_id: int) -> int:
    """The id after ``last_id``: ids grow, with gaps, as in a real database."""
    return last_id + rng.randint(1, 40)


def references(tables: Mapping[str, Sequence[Record]]) -> dict[str, list[int]]:
    """The ids of ``tables`` by resource, for generators to point at."""
    return {name: [record.id for record in records] for name, records in tables.items()}


def generate_tenant(seed: int, tenant_id: int, count: int) -> dict[str, list[Record]]:
    """``count`` records of every resource of one tenant, ordered by id."""
    tables: dict[str, list[Record]] = {}
    for resource, generator in GENERATORS.items():
        rng = random.Random(f"{seed}:{tenant_id}:{resource}")  # noqa: S311
        refs = references(tables)
        last_id = rng.randrange(10_000_000, 90_000_000)
        records = []
        for _ in range(count):
            last_id = next_id(rng, last_id)
            body = generator(rng, refs)
            created_ms = rng.randrange(DATA_START_MS, DATA_END_MS)
            modified_ms = rng.randint(created_ms, DATA_END_MS)
            deleted, active = rng.random() < _DELETED_SHARE, rng.random() < _ACTIVE_SHARE
            records.append(Record(last_id, created_ms, modified_ms, active and not deleted, deleted, body))
        tables[resource] = records
    return tables
