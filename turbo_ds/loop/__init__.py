"""The training loop, as small components that each decide when to act (torchtitan's shape).

``trainer.Trainer.fit`` reads as the algorithm and hands the rest to: ``evaluation`` (the evaluations
and their summaries, shared with ``scripts/eval.py``), ``metrics`` (the ``train/*`` logging window),
``checkpoint`` (when and where to save, and loading), ``memory`` (peaks, the first step beside the
planner's prediction), ``data`` (loaders, the epoch stream), ``preemption`` (stop requests),
``watchdog`` (stalls), ``rng`` and ``progress``. ``setup.setup`` builds what training and evaluation
share; ``train_cli`` and ``eval_cli`` are the entry points of ``scripts/train.py`` and ``scripts/eval.py``.

Nothing is imported here: ``turbo_ds.config`` imports ``loop.preemption`` (signal names), which must
not pull in the loop.
"""
