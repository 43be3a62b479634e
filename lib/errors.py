"""The one error type a user sees for bad input."""


class ConfigError(ValueError):
    """Bad input: unknown profile/dataset/model, invalid parameter, missing data, corrupt file."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)
