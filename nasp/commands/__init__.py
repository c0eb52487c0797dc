"""The command lines of the nasp spaces: one module per space (``nasp cnn ...``, ``nasp rnn ...``)."""


def check_threads(threads: int) -> None:
    """The ``threads`` setting of every command: 0 (torch's default) or a positive count."""
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0: torch's default), got {threads}")


def genotype_error(value: str, err: Exception, writer: str) -> ValueError:
    """One line for a ``model.genotype`` that does not load: the setting, the cause (whitespace collapsed, cut at
    300 characters) and ``writer``, the command that writes such files."""
    msg = " ".join(str(err).split())
    return ValueError(f"model.genotype={value}: {msg[:300]}{' ...' if len(msg) > 300 else ''} ({writer})")
