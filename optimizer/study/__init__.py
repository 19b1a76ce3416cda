"""Studies: the Orchestrator that creates and loads them, ask/tell, search spaces, score summaries.

Nothing is imported here: the public names are exported (lazily) by ``studyhall.optimizer``.
"""

from __future__ import annotations
