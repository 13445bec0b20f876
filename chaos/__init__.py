"""jobq's Chaos Toolkit extension: actions and probes that break a jobq stack on purpose and
check that every job still finished exactly once (``chaos discover jobq``, which chaoslib finds
through the top-level ``_chaosjobq``)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "discover"]


def discover(discover_system: bool = True) -> dict[str, Any]:
    """The activities this extension offers (Chaos Toolkit's discovery format)."""
    from chaoslib.discovery.discover import discover_actions, discover_probes, initialize_discovery_result

    discovery: dict[str, Any] = initialize_discovery_result("jobq", __version__, "jobq")
    discovery["activities"].extend(discover_actions("chaos.actions"))
    discovery["activities"].extend(discover_actions("chaos.k8s_actions"))
    discovery["activities"].extend(discover_probes("chaos.probes"))
    return discovery
