"""The status tracker server role (RFC 9019 §3, "status tracker"): devices, their inventory,
their update state machine and the SUIT reports they send.

``db`` is the storage (SQLAlchemy 2 models and queries, no web code); ``api`` is the HTTP edge
(a FastAPI ``APIRouter`` that ``suitkit serve`` mounts on the firmware server's application).

The tracker does not import the firmware server or the device: the CLI wires them together
(design.md §2). Not here yet: campaigns, waves, approvals, push (SSE / long-poll / MQTT),
PostgreSQL in the tests, Alembic migrations, the dashboard, the device-side tracker client.
"""
