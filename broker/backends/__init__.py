"""Cluster backends: the seam between the dispatcher and whatever runs pods."""
