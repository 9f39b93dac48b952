"""The base experiment config every ``configs/*.py`` file starts from.

Every knob lives here and can be overridden from the command line, e.g. ``--config.ae.steps=200``. Config
files pick a variant with ``get_config(arg)`` (``--config=configs/ae_then_dyn.py:paper``).
"""

from __future__ import annotations

import ml_collections

EMBEDDED_DATASETS = (
    "euler_multi_quadrants_periodicBC",
    "euler_multi_quadrants_openBC",
    "shear_flow",
    "gray_scott_reaction_diffusion",
)


def optimizer_config(name: str = "adamw", lr: float = 1e-3, steps: int = 1000) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        name=name, lr=lr, warmup_steps=max(1, steps // 20), total_steps=steps, min_lr_ratio=0.05,
        weight_decay=1e-4, b1=0.9, b2=0.99, eps=1e-8, grad_clip=1.0,
        precondition_frequency=10, max_precond_dim=1024))


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stages = ("ae", "dyn")
    c.seed = 0

    c.data = ml_collections.ConfigDict(dict(
        # Folder holding <dataset>/data/{train,valid,test}/*.hdf5 and <dataset>/stats.yaml (The Well's
        # `well_base_path`, i.e. the `.../datasets` folder of a Well download).
        well_base_path="data/datasets",
        # Generate an embedded dataset when it is missing (only for tokpre's embedded systems).
        generate_missing=True,
        # Overrides for `python -m tokpre.data.generate` when the main job generates a dataset (empty: defaults).
        generate=ml_collections.ConfigDict(dict(resolution=0, n_trajectories=0, n_steps=0)),
        batch_size=16,        # global batch, split over processes and the ('data', 'fsdp') mesh axes
        num_workers=0,        # Grain worker processes per host (0: read in the main process)
        flip=True,            # random axis flips (vector/tensor components negated as The Well does)
        roll=True,            # random rolls on periodic axes
        log_fields=(),        # strictly positive fields normalised as log(x) before z-scoring
        min_dt=1, max_dt=1,   # time stride range for training windows
    ))

    c.model = ml_collections.ConfigDict()
    c.model.tokeniser = ml_collections.ConfigDict(dict(
        vocab_size=96, widths=(32, 64), latent_channels=16, depth=1,
        decoder_depth=ml_collections.config_dict.placeholder(int),   # None: same as depth
        res_kernel_t=ml_collections.config_dict.placeholder(int),    # residual blocks' time kernel; None: 2
        spatial_factors=(4, 8, 16), temporal_factors=(1, 2), n_spatial_dims=2))
    c.model.processor = ml_collections.ConfigDict(dict(
        d_model=128, num_layers=4, num_heads=4, mlp_ratio=4, predict_increment=True))

    c.ae = ml_collections.ConfigDict(dict(
        datasets=("euler_multi_quadrants_periodicBC",),
        n_frames=2,                 # frames per autoencoded window (a multiple of every temporal factor)
        steps=1000,
        compressions=(),            # (t, s) pairs sampled per step; empty: every allowed pair
        compression_weights=(),     # relative sampling weight per entry of compressions; empty: uniform
        eval_compressions=(),       # (t, s) pairs in the final reconstruction table; empty: every allowed pair
        loss="mse",                 # 'mse' | 'vrmse' on normalised fields
        jitter=True,                # patch jittering on periodic axes
        optimizer=optimizer_config("soap", 2e-3, 1000),
        # eval_every > 0: reconstruction VRMSE on eval_batches batches of the valid split (windows spread over
        # the split) every eval_every steps. The final table always reads the whole test split.
        log_every=50, ckpt_every=250, eval_every=0, eval_batches=8,
    ))

    c.dyn = ml_collections.ConfigDict(dict(
        dataset="euler_multi_quadrants_periodicBC",
        tokeniser="finetune",       # 'scratch' | 'finetune' | 'frozen'
        ae_checkpoint="",           # AE checkpoint dir; empty: <workdir>/ae/checkpoints
        compression=(1, 4),         # (t, s) used by the emulator
        n_steps_input=4,
        steps=1000,
        loss="mse",                 # 'mse' on the next frame | 'increment' on u(t+1) - u(t)
        cache_latents=True,         # frozen mode: train the processor on latents encoded once
        optimizer=optimizer_config("adamw", 1e-3, 1000),
        log_every=50, ckpt_every=250, eval_every=0, eval_batches=8,
        rollout_max_steps=100, rollout_trajectories=0,   # 0: every test trajectory
    ))

    c.mesh = ml_collections.ConfigDict(dict(
        shape=(-1, 1, 1),           # ('data', 'fsdp', 'model'); -1 takes the remaining devices
        rules="fsdp",               # 'dp' | 'fsdp' | 'fsdp_tp' or a list of (logical, mesh axis) pairs
    ))
    c.distributed = ml_collections.ConfigDict(dict(
        coordinator_address="", num_processes=0, process_id=-1, auto=False))
    return c


def sync_schedule(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Keeps each stage's optimiser schedule length equal to its step count (after command-line overrides)."""
    for stage in ("ae", "dyn"):
        s = c[stage]
        s.optimizer.total_steps = int(s.steps)
        s.optimizer.warmup_steps = min(int(s.optimizer.warmup_steps), int(s.steps) // 5)
    return c
