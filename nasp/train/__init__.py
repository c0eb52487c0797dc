"""Stand-alone trainers for found architectures (image classifiers: :mod:`nasp.train.image`)."""
