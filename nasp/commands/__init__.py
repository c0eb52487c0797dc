"""The command lines of the nasp spaces: one module per space (``nasp cnn ...``, ``nasp rnn ...``)."""


def check_threads(threads: int) -> None:
    """The ``threads`` setting of every command: 0 (torch's default) or a positive count."""
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0: torch's default), got {threads}")
