"""The one exception type for mistakes a user can fix by changing a config key or a file."""


class ConfigError(ValueError):
    """A user-fixable problem, stated in one sentence naming the config key or file and the fix."""
