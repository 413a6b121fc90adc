"""Checkpoints and exact resume for the one training loop (``sft`` and ``distill``).

A checkpoint is a directory ``<run>/checkpoints/step-NNNNNNNN/`` holding

* ``model.safetensors``: the model's trainable parameters (every weight in full fine-tuning, the adapters
  with LoRA; frozen weights come back from the model the run started from), and ``<name>.safetensors`` for
  every other trained module (``reward_head.safetensors`` for the X-variants);
* ``optimizer.pt``: the optimizer state, read back with ``torch.load(weights_only=True)`` (tensors and plain
  containers only: no arbitrary unpickling);
* ``state.json``: step, LR scheduler, the fp16 loss scaler (``--mixed-precision fp16``), loop counters and
  evaluations so far, the data position (index stream, the α coin, the student sampler's counters), the
  resolved config and its hashes;
* ``rng-rank<R>.json``: the random states of process R (python ``random``, numpy, torch CPU, CUDA);
* ``COMPLETE``: written last, with the step and the size of every file.

Writing: every file goes into a temporary sibling directory and is fsync'd, the directory is renamed to its
final name, and only then is ``COMPLETE`` written (itself through a temporary name) — a checkpoint without
it does not exist for resume. Older checkpoints are rotated away (``--keep-last``) only after that, and
leftovers of a crash (temporary or unmarked directories) are removed at the same time. A failed write
(disk full) removes its temporary directory and leaves the previous checkpoint as it was. A run that finishes
deletes its checkpoints once its model is saved, unless the user asked for them (``--keep-last``,
``--save-every``): then the newest ``--keep-last`` (2) stay.

Resume restores everything, the RNG states last, right before the first resumed step (all randomness of a
step is drawn inside the step: dropout, the α coin, student sampling), so a resumed run continues the very
same streams and ends with bit-identical weights on the same device and software.

Signals: during training SIGTERM and SIGINT finish the current step, write a checkpoint and stop with
:class:`TrainingInterrupted` (the run is recorded as ``interrupted``); a second SIGINT stops at once.

``XKD_TEST_CHECKPOINT_DELAY`` (seconds, tests only) sleeps after each file of a checkpoint and between the
rename and ``COMPLETE``, so a test can kill the process while a checkpoint is half written.

Multi-process training: every process writes its own ``rng-rank<R>.json``; the main process writes the rest
and seals the checkpoint. A stop signal that reaches any process stops all of them at the same step. Under
FSDP each process also writes its shards of the sharded model and of the optimizer state
(``model-rank<R>.safetensors``, ``optimizer-rank<R>.pt``, in place of ``model.safetensors`` and
``optimizer.pt``), and reads back its own.

Modules: :mod:`.checkpointer` saves and restores (the :class:`~.checkpointer.Checkpointer` the training loop
drives); :mod:`.resume` finds a run's complete checkpoints and decides whether a command continues one;
:mod:`.lock` keeps a second process off a run being trained; :mod:`.rng` holds the random states;
:mod:`.files` writes every file durably.
"""
