"""The one exception type that the command line turns into a single error line and exit code 2."""


class WhoharryError(Exception):
    """A problem with the user's input or environment, explained in one line."""
