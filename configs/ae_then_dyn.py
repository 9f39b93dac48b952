"""Tokeniser pretraining (stage 1) then dynamics training with the pretrained tokeniser (stage 2, finetune).

    python -m tokpre.main --config=configs/ae_then_dyn.py --workdir=runs/quickstart          # CPU default
    python -m tokpre.main --config=configs/ae_then_dyn.py:paper --workdir=/path/to/run         # accelerator pod

Default (`small`): embedded `euler_multi_quadrants_periodicBC` at 64x64 (36 trajectories of 81 steps, generated
on first use, ~20 s), stage 1 = a causal conv tokeniser trained with SOAP at runtime-sampled compressions
(t, s) in {1, 2} x {4, 8, 16}; stage 2 = a space-time transformer processor on the s=4 latent grid (16x16
tokens), tokeniser finetuned from stage 1, then an autoregressive rollout on the test split. Cost, measured on a
2-core CPU: 14 min 22 s end to end from a fresh checkout (environment set-up, 20 s data generation, 9 min 4 s
for 2500 stage-1 steps at ~5 steps/s, 3 min 53 s for 200 stage-2 steps at ~0.9 steps/s, the rollout).

Why these sizes (stage 1 must fit in 10 minutes on 2 cores and reach reconstruction VRMSE < 0.10 at s=4 and < 0.20
at s=8): 64x64 keeps the shocks of the multi-quadrant problem a few cells wide at s=4 and costs 4x less per step
than 128x128; 36 trajectories (24 train: 1,920 two-frame windows, seen ~10 times with flips and rolls) are enough
for 2500 steps of batch 8 (train-split reconstruction VRMSE 0.088 / 0.185 at (1, 4) / (1, 8) against 0.090 / 0.186
on test). The tokeniser (0.30M parameters) has widths (32, 64), 32 latent channels and one residual block per
decoder stage with spatial-only (time kernel 1) convolutions: that block lowered test VRMSE at (1, 4) from 0.097 to
0.090 for ~20% more time per step, and the time kernel of 1 keeps stage 2's decoding to 3 latent frames. Density,
pressure and energy are normalised as log(x). Compressions (1, 4) and (1, 8), the ones stage 2 and the targets use,
get 30% of the steps each (the four others 10%); without the decoder block this weighting moved (1, 4) / (1, 8)
from 0.113 / 0.223 (uniform sampling) to 0.097 / 0.205. Measured: 0.090 at (1, 4) and 0.186 at (1, 8) (README
"Quick start"). The processor has 0.15M parameters (d_model 64, 3 layers).

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
