"""What distillation and alignment minimise (docs/method.md).

- ``chunked``         the chunked evaluation of per-position losses; masks, NLL, token log-probabilities
- ``divergences``     forward / reverse KL, generalised JSD(β), β-mix, TVD, and against a top-k teacher
- ``experiential``    X-KD's F_ex: Q-values (Eq. 28), TD errors (Eq. 16), Gaussian terms (Eq. 20)
- ``reward``          the reward encoder q_φ (a linear Gaussian head)
- ``minillm``         the MiniLLM baseline's rewards, advantages, mixed sampling and PPO clip
- ``ava``             AVA-d, AVA-p (with F_c), a response's reward; the Bradley–Terry and DPO baselines
- ``alignment``, ``cross_tokenizer``  distillation between two tokenizers
- ``teacher_cache``   the teacher's view of fixed targets, kept on disk
- ``steps``           what a training step calls per batch: NLL, KD (+ F_ex), MiniLLM
- ``reference``       the same math on plain full tensors, the tests' oracle

Each loss's hyperparameters are a small frozen object beside it (``ExperientialParams``, ``DivergenceParams``,
``MiniLLMParams``, ``AVAParams``, ``DPOParams``); their names and ranges live in ``xkd_cli.core.hparams``.
"""
