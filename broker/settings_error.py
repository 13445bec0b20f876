"""The one error a bad setting raises (``broker/settings.py``, ``broker/pod_settings.py``)."""


class SettingsError(ValueError):
    """A setting has a value that cannot work; the message names the variable."""
