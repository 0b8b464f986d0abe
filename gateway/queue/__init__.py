"""The durable queue: `.dcm` files on disk, one SQLite outbox pointing at them."""

from gateway.queue.outbox import DeliveryState, Outbox, QueuedObject, QueueError

__all__ = ["DeliveryState", "Outbox", "QueueError", "QueuedObject"]
