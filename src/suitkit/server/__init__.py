"""The firmware server role (RFC 9019 §3, "firmware server"): content-addressed storage of
images and envelopes, and their delivery over HTTP and CoAP.

``store`` is the storage (no web code); ``app`` is the FastAPI edge (``create_app``); ``coap``
serves the same blobs block-wise over CoAP; ``background`` runs the HTTP server in a thread;
``guard`` bounds what slow and idle clients can hold (timeouts, a connection cap).
The server is untrusted from the device's point of view: it checks uploads against the author
trust anchors so that operators catch mistakes early, but devices verify everything again.

Not here yet: the status tracker, CoAP observe (push), a roles database.
"""
