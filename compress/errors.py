"""The one exception type for user mistakes."""


class UserError(Exception):
    """A mistake in user input (recipe, path, override, data).

    The message says what is wrong and where; the CLI prints it on one line and exits 2.
    """
