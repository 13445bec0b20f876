"""jobq's Chaos Toolkit extension, under the name chaoslib finds it by.

``chaos discover jobq`` imports the *first* top-level package of the ``jobq`` distribution (its
``top_level.txt`` is sorted, hence the leading underscore, which puts this one before ``broker``)
and calls its ``discover``. Named like other extensions (``chaosk8s``, ``chaosaws``). The
activities themselves live in ``chaos`` (``chaos.actions``, ``chaos.k8s_actions``,
``chaos.probes``), which is what experiments name as their modules.
"""

from __future__ import annotations

from chaos import __version__, discover

__all__ = ["__version__", "discover"]
