"""What a resumed run may change: the one list that :func:`vaekit.fit` (its checkpoint's
settings) and the app (a run's config) both follow. These say how long to train, how often
to save, where to run, at what precision and learning rate from now on (a run started in
bf16 on a CPU that has it goes on in fp32 on one that does not), not what was computed so far;
any other difference is refused (the result would not be the run's). Kept free of torch so
that the CLI reads it without importing torch."""

MAY_CHANGE_ON_RESUME = ("epochs", "steps", "time_budget", "checkpoint_every", "checkpoint_minutes",
                        "max_bad_steps", "device", "save_best", "lr", "precision")
