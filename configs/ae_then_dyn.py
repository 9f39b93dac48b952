"""Tokeniser pretraining (stage 1) then dynamics training with the pretrained tokeniser (stage 2, finetune).

    python -m tokpre.main --config=configs/ae_then_dyn.py --workdir=runs/quickstart          # CPU default
    python -m tokpre.main --config=configs/ae_then_dyn.py:paper --workdir=/path/to/run         # accelerator pod

Default (`small`): embedded `euler_multi_quadrants_periodicBC` at 64x64 (generated on first use, ~20 s),
stage 1 = a causal conv tokeniser trained with SOAP at runtime-sampled compressions (t, s) in {1, 2} x
{4, 8, 16}; stage 2 = a space-time transformer processor on the s=4 latent grid (16x16 tokens), tokeniser
finetuned from stage 1, then an autoregressive rollout on the test split. Cost, measured on a 2-core CPU:
12 min 10 s end to end from a fresh checkout (22 s data generation, 6 min 19 s for 2500 stage-1 steps at
~7 steps/s, 5 min for 250 stage-2 steps at ~0.9 steps/s, the rollout); tokeniser 0.21M parameters (widths
(32, 64), latent 32), processor 0.15M.

`paper`: The Well's `euler_multi_quadrants_periodicBC` (512x512, 5 fields; download it with The Well's tool and
point data.well_base_path at its `datasets` folder), a wider tokeniser (3 stages) and a ~100M-parameter
processor, FSDP over every device, 10,500 stage-2 steps as in the paper's headline comparison.
Sizes (from `jax.eval_shape`, checked by tests/configs_test.py): tokeniser 53,323,808 parameters (encoder
26,661,824, decoder 26,661,984); processor 113,376,000. Per-step FLOPs from XLA's cost analysis of the compiled
step on abstract inputs (global batch 64, 512x512, 5 fields; `python -m tokpre.bench flops --config=...:paper`):
stage 1 at compression (1, 4) 8.02e14 (about 12.5 TFLOP per sample); stage 2 at (1, 16) 4.49e14.
"""

from tokpre.config import base_config, optimizer_config


def get_config(arg: str = ""):
    variant = arg or "small"
    c = base_config()
    if variant == "small":
        c.data.batch_size = 8
        c.data.log_fields = ("density", "pressure", "energy")
        c.model.tokeniser.update(widths=(32, 64), latent_channels=32, depth=0, decoder_depth=1, res_kernel_t=1)
        c.model.processor.update(d_model=64, num_layers=3, num_heads=4, mlp_ratio=2)
        c.ae.steps = 2500
        # (1, 4) and (1, 8) (the ratios stage 2 and the reconstruction targets use) get 30% of the steps each.
        c.ae.compression_weights = (3, 3, 1, 1, 1, 1)
        c.ae.log_every = 100
        c.ae.eval_every = 500
        c.ae.ckpt_every = 1000
        c.ae.optimizer = optimizer_config("soap", 3e-3, c.ae.steps)
        c.dyn.steps = 200
        c.dyn.optimizer = optimizer_config("adamw", 5e-4, c.dyn.steps)
        c.dyn.rollout_max_steps = 40
    elif variant == "paper":
        c.data.well_base_path = "/data/the_well/datasets"
        c.data.generate_missing = False
        c.data.batch_size = 64
        c.data.num_workers = 8
        c.model.tokeniser.update(widths=(128, 256, 512), latent_channels=64, depth=2)
        c.model.processor.update(d_model=768, num_layers=12, num_heads=12, mlp_ratio=4)
        c.ae.steps = 20000
        c.ae.optimizer = optimizer_config("soap", 1e-3, c.ae.steps)
        c.ae.ckpt_every = 1000
        c.ae.log_every = 100
        c.dyn.steps = 10500
        c.dyn.optimizer = optimizer_config("adamw", 3e-4, c.dyn.steps)
        c.dyn.ckpt_every = 1000
        c.dyn.log_every = 100
        c.dyn.compression = (1, 16)
        c.mesh.shape = (1, -1, 1)
        c.mesh.rules = "fsdp"
    else:
        raise ValueError(f"configs/ae_then_dyn.py: unknown variant {variant!r}; expected 'small' or 'paper'")
    return c
