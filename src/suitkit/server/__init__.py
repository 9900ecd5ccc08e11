"""The firmware server role (RFC 9019 §3, "firmware server"): content-addressed storage of
images and envelopes, and their HTTP delivery.

``store`` is the storage (no web code); ``app`` is the FastAPI edge (``create_app``). The server
is untrusted from the device's point of view: it checks uploads against the author trust anchors
so that operators catch mistakes early, but devices verify everything again themselves.

Not here yet: the status tracker, CoAP delivery, a roles database.
"""
