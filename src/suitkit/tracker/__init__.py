"""The status tracker server role (RFC 9019 §3, "status tracker"): devices, their inventory,
their update state machine, the SUIT reports they send, deployments, campaigns and update
notices.

One room per concern, arrows pointing down only (import-linter checks it; docs/tracker.md,
"Code layout"): ``edges`` (one module per protocol: ``http_api``, ``campaigns_http``,
``push_http``) and ``web`` (what the HTTP edges share) translate requests; ``campaigns`` is the
campaign engine; ``service`` holds the rules (``TrackerDB``); ``notices`` is the hub of update
notices and its MQTT and CoAP channels; ``store`` is the only module that talks to the database;
``model`` holds the tables and the state machine; ``auth``, ``quotas`` and ``config`` serve
them.

The tracker does not import the firmware server or the device: the CLI wires them together
(design.md §2). Not here: the device-side tracker client (``suitkit.device``), the dashboard
(``suitkit.dashboard``).
"""
