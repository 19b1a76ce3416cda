"""The HTTP service (app, routes, HTTP gate, models, trial leases) and its Python client.

Nothing is imported here: the public names are exported (lazily) by ``studyhall.optimizer``,
so that fastapi and httpx load only when the service or the client is used.
"""

from __future__ import annotations
