"""opdkit's verl plugin: run opdkit's methods on verl 0.9.1 (Ray + FSDP/Megatron + vLLM/SGLang) unforked.

The only place in opdkit that imports verl. Importing this package imports nothing heavy; verl itself loads
``plugin`` through the ``verl.plugins`` entry point in every process that imports verl.

    plugin.py      entry point: registers everything below
    estimators.py  advantage estimators opdkit_grpo, opdkit_sc_grpo          (imports verl)
    losses.py      distillation losses opdkit_scope, opdkit_sc_k1/k2/k3,
                   opdkit_sc_forward_kl_topk                                 (imports verl)
    trainer.py     trainer opdkit_sync: whole-step weights on the driver     (imports verl, TransferQueue)
    fields.py      those driver-side weights (torch + opdkit.core only)
    params.py      the ``algorithm.opdkit`` parameters and batch field names (no verl, no torch)
    config_gen.py  ``opdkit verl-config``: opdkit training config -> verl launch command (no verl)
    config_methods.py  each method's verl overrides, and what verl cannot run (no verl)

Usage and what cannot run on verl 0.9.1 (the SDPO family): docs/verl.md.
"""
