"""A small Python client for the human-parsing service's HTTP API.

    from m2fp_client import Client
    client = Client("https://localhost:8443", ca_bundle="var/tls/ca.pem")
    png = client.parse("photo.jpg")                  # the overlay, PNG bytes
    result = client.parse("photo.jpg", output="json")  # the JSON result, a dict

Certificates are always verified (against `ca_bundle` when given, else the system store);
requests that meet 502/503/504 or 429 are retried a bounded number of times, honouring the
server's Retry-After up to a bound. CLI: `python -m m2fp_client parse photo.jpg --out o.png`;
folders and many files in batch (m2fp_client/batch.py): `parse photos/ --out parsed/`.
"""

from m2fp_client.client import Client, ClientError, ConnectionFailed, ServiceError

__all__ = ["Client", "ClientError", "ConnectionFailed", "ServiceError"]
