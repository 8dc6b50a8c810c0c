"""Person events: a tracker per source turns processing results into visits (`person_seen`,
`person_gone`), a store keeps them (memory, JSON lines, JPEG snapshots) and the service ties
both to the pipelines and to the live subscribers (doc/API_DOCUMENTATION.md "Events")."""

from events.service import EventService, Subscriber
from events.store import EventStore
from events.tracker import VisitTracker

__all__ = ["EventService", "EventStore", "Subscriber", "VisitTracker"]
