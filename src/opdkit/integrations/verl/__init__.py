"""opdkit's verl plugin: run opdkit's methods on verl 0.9.1 (Ray + FSDP/Megatron + vLLM/SGLang) unforked.

The only place in opdkit that imports verl. Importing this package imports nothing heavy; verl itself loads
``plugin`` through the ``verl.plugins`` entry point in every process that imports verl.

    plugin.py      entry point: registers everything below
    estimators.py  advantage estimators opdkit_grpo, opdkit_sc_grpo          (imports verl)
    losses.py      distillation losses opdkit_scope, opdkit_sc_k1/k2/k3,
                   opdkit_sc_forward_kl_topk                                 (imports verl)
    trainer.py     trainer opdkit_sync: whole-step weights on the driver     (imports verl, TransferQueue)
    fields.py      those driver-side weights (torch + opdkit.core only)
    sdpo_trainer.py  trainer opdkit_sdpo: the SDPO family (SDPO, SC-SDPO, hard filter, PACED, SRPO)
    sdpo_worker.py   its worker: the self-teacher's loss, EMA, teacher checkpoints        (imports verl)
    sdpo_loss.py     the actor loss: teacher forward at response positions, in chunks (verl on the worker)
    sdpo_fields.py   its driver-side fields over the whole step (torch + opdkit.core only)
    teacher_context.py  each row's teacher input, built by opdkit.teachers           (no verl)
    ema.py           the EMA teacher on FSDP2 shards, saved with the checkpoint          (no verl)
    sdpo_params.py, config_sdpo.py  ``algorithm.opdkit_sdpo`` and its ``opdkit verl-config`` plans (no verl)
    params.py      the ``algorithm.opdkit`` parameters and batch field names (no verl, no torch)
    config_gen.py  ``opdkit verl-config``: opdkit training config -> verl launch command (no verl)
    config_methods.py  each method's verl overrides, and what verl cannot run (no verl)

Usage, what runs where and the GPUs each method needs: docs/verl.md.
"""
