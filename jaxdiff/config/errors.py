"""The error of a config that cannot be trained (shared by the validation modules)."""


class ConfigError(ValueError):
  """A config that cannot be trained (or resumed) as given; the message is one line."""
