"""The command lines of the nasp spaces: one module per space (``nasp cnn ...``, ``nasp rnn ...``)."""
