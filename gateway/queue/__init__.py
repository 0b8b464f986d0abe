"""The durable queue: `.dcm` files on disk, one SQLite outbox pointing at them."""

from gateway.queue.db import QueueError
from gateway.queue.model import DeliveryState, QueuedObject
from gateway.queue.outbox import Outbox
from gateway.queue.retention import RetentionPolicy

__all__ = ["DeliveryState", "Outbox", "QueueError", "QueuedObject", "RetentionPolicy"]
