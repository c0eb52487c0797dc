"""Stand-alone trainers for found architectures: image classifiers (:mod:`nasp.train.image`) and language models
(:mod:`nasp.train.language`); each supplies its epoch step to the one loop, :class:`nasp.trainer.Trainer`."""
