"""The MIPROv2-style loop: candidates, minibatch evaluation, the loop, and the simulated task of the demo.

Nothing is imported here: the public names are exported (lazily) by ``studyhall.optimizer``.
"""

from __future__ import annotations
