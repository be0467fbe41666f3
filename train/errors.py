"""The one exception type meant for users rather than developers."""


class UserError(Exception):
    """A mistake in the user's input: the CLI prints it as one line and exits with code 2.

    The message should say what was wrong, the offending value and what is allowed.
    """
