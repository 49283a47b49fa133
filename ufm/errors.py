"""The errors a user sees: bad input, named. A leaf: imports nothing from ufm, so every room
raises the same classes (the CLI prints an `InputError` as one line and exits 2)."""


class InputError(ValueError):
    """Something the user gave is not usable (a file, a folder, a value); the message says what
    and what is allowed. The CLI prints it as one line."""


class ConfigError(InputError):
    """A bad experiment file or override; the message names the key, the value and the rule."""
