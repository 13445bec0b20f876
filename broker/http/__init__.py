"""The dispatcher's HTTP endpoint: JSON API, dashboard, health and Prometheus metrics."""
