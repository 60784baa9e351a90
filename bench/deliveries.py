"""Many distinct, realistic Stripe deliveries built from the recorded fixtures, signed like Stripe does.

The mix follows a Billing account's traffic: payments, invoice items created and deleted, and
invoice.paid carrying its payments. Object ids are fresh per event, except that deletions target
items created earlier and some invoices re-send payments already seen (stale or newer snapshots).
"""

from __future__ import annotations

import copy
import json
import random
import secrets as secrets_module
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.webhook.signature import sign_header

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
MIX = (
    ("invoice_payment.paid", 0.35),
    ("invoiceitem.created", 0.30),
    ("invoiceitem.deleted", 0.10),
    ("invoice.paid", 0.25),
)


@dataclass(frozen=True)
class Delivery:
    event_id: str
    event_type: str
    body: bytes


def _load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _stripe_id(prefix: str, rng: random.Random) -> str:
    return f"{prefix}_{''.join(rng.choices(ID_ALPHABET, k=24))}"


class DeliveryFactory:
    def __init__(self, seed: int = 2) -> None:
        self.rng = random.Random(seed)
        self.templates = {name: _load(name) for name, _ in MIX}
        self.created_items: list[dict[str, Any]] = []
        self.paid_payments: list[dict[str, Any]] = []
        self.clock = 1_767_225_600
        # A run tag keeps event ids distinct across runs against the same PostgreSQL server.
        self.run_tag = secrets_module.token_hex(3)

    def _envelope(self, event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.clock += self.rng.randint(0, 2)
        envelope = copy.deepcopy(self.templates[event_type])
        envelope["id"] = f"evt_bench{self.run_tag}{_stripe_id('', self.rng)}"
        envelope["created"] = self.clock
        envelope["data"] = {"object": obj}
        return envelope

    def _payment(self, invoice_id: str) -> dict[str, Any]:
        payment = copy.deepcopy(self.templates["invoice_payment.paid"]["data"]["object"])
        payment["id"] = _stripe_id("inpay", self.rng)
        payment["invoice"] = invoice_id
        payment["amount_paid"] = payment["amount_requested"] = self.rng.randint(100, 500_000)
        payment["created"] = self.clock - 60
        payment["payment"] = {"type": "payment_intent", "payment_intent": _stripe_id("pi", self.rng)}
        payment["status_transitions"] = {"canceled_at": None, "paid_at": self.clock}
        return payment

    def make(self, event_type: str) -> dict[str, Any]:
        if event_type == "invoice_payment.paid":
            payment = self._payment(_stripe_id("in", self.rng))
            self.paid_payments.append(payment)
            return self._envelope(event_type, payment)
        if event_type == "invoiceitem.created":
            item = copy.deepcopy(self.templates[event_type]["data"]["object"])
            item["id"] = _stripe_id("ii", self.rng)
            item["customer"] = _stripe_id("cus", self.rng)
            item["amount"] = self.rng.randint(100, 100_000)
            item["date"] = self.clock
            self.created_items.append(item)
            return self._envelope(event_type, item)
        if event_type == "invoiceitem.deleted":
            if self.created_items and self.rng.random() < 0.8:
                item = self.created_items.pop(self.rng.randrange(len(self.created_items)))
                obj = {"id": item["id"], "object": "invoiceitem", "deleted": True}
            else:  # a deletion for an item this mirror never saw: a stub tombstone
                obj = {"id": _stripe_id("ii", self.rng), "object": "invoiceitem", "deleted": True}
            return self._envelope(event_type, obj)
        invoice = copy.deepcopy(self.templates["invoice.paid"]["data"]["object"])
        invoice["id"] = _stripe_id("in", self.rng)
        for line in invoice["lines"]["data"]:  # Stripe's line ids are unique: no two invoices share a row
            line.update(id=_stripe_id("il", self.rng), invoice=invoice["id"])
        payments = [self._payment(invoice["id"]) for _ in range(self.rng.randint(1, 3))]
        if self.paid_payments and self.rng.random() < 0.3:  # re-sends a payment already mirrored
            payments.append(self.paid_payments[self.rng.randrange(len(self.paid_payments))])
        invoice["payments"] = {
            "object": "list",
            "data": payments,
            "has_more": False,
            "url": f"/v1/invoice_payments?invoice={invoice['id']}",
        }
        return self._envelope(event_type, invoice)

    def deliveries(self, count: int) -> list[Delivery]:
        names = [name for name, _ in MIX]
        weights = [weight for _, weight in MIX]
        made = []
        for event_type in self.rng.choices(names, weights, k=count):
            envelope = self.make(event_type)
            body = json.dumps(envelope, separators=(",", ":")).encode()
            made.append(Delivery(envelope["id"], event_type, body))
        return made


def http_request(delivery: Delivery, secret: str, timestamp: int, path: str = "/webhooks/stripe") -> bytes:
    """The whole HTTP/1.1 request, signed at ``timestamp``, ready to write on a keep-alive socket."""
    head = (
        f"POST {path} HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        "User-Agent: Stripe/1.0 (+https://stripe.com/docs/webhooks)\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(delivery.body)}\r\n"
        f"Stripe-Signature: {sign_header(delivery.body, secret, timestamp)}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + delivery.body
