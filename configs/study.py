"""The pretraining study (issue 7): scratch vs in-domain vs out-of-domain vs mixed tokeniser, plus a compression sweep.

    python -m tokpre.study --config=configs/study.py --workdir=runs/study                  # :small, this CPU
    python -m tokpre.study --config=configs/study.py --workdir=runs/study --report_only    # report only
    python -m tokpre.study --config=configs/study.py:paper --workdir=/path/to/study         # The Well, accelerators

The config is a tokpre base config (``base_config()``: data, model, ae, dyn, mesh; shared by every run of the
study) plus a ``study`` block:

- ``study.pretrain``: one tokeniser pretraining run (the ``ae`` stage) per entry, ``name -> datasets``;
  ``study.pretrain_order`` fixes their order. ``in_domain`` = the downstream system (Euler), ``out_of_domain`` =
  shear flow, ``mixed`` = shear flow + Gray-Scott (batches alternate between the datasets).
- ``study.arms``: one stage-2 arm per entry, ``name -> (tokeniser mode, pretrain name or '', compression (t, s))``;
  ``study.arm_order`` fixes their order. Every arm trains ``dyn.steps`` steps on ``dyn.dataset`` for each seed
  of ``study.seeds`` with test-split one-step VRMSE (and The Well's 3-band spectral NMSE) every
  ``dyn.eval_every`` steps. The compression sweep is the set of in-domain finetune arms at different ``s``
  (one tokeniser for all: the AE stage trains every ratio of ``ae.compressions``).
- ``study.baseline``: the arm every reduction is measured against (scratch).
- Data: ``:small`` generates the embedded datasets at 32x32 into ``data/study`` on first use
  (``data.generate.resolution``), separate from the 64x64 ones of the other configs.
- ``study.compilation_cache``: keep compiled executables in ``<study>/jax_cache`` (the seeds of an arm compile the
  same steps).
- ``study.docs_dir``: where the report's figure (``study.png``) and table (``study_results.md``) are copied.

Workdir layout: ``<study>/ae/<pretrain>/`` and ``<study>/dyn/<arm>/seed<k>/``, each a ``tokpre.main`` workdir;
rerunning skips finished runs and resumes interrupted ones from their last checkpoint. The report goes to
``<study>/report/`` (``report.md``, ``study.json``, ``study.png``).

``:small`` sizes (measured on the 2-core CPU, see README "Results"): 32x32 data, tokeniser widths (16, 32),
latent 16, depth 0, spatial factors (4, 8); processor d_model 64, 2 layers; batch 8; 3 seeds.
``:paper``: The Well's ``euler_multi_quadrants_periodicBC``, ``shear_flow`` and ``gray_scott_reaction_diffusion``
(download them with ``the-well-download`` and point ``data.well_base_path`` at the ``datasets`` folder), the
``configs/ae_then_dyn.py:paper`` model sizes, 10,500 stage-2 steps (the paper's headline budget), 3 seeds,
compression sweep at s=16 and s=32.
"""

import ml_collections

from tokpre.config import base_config, optimizer_config

EULER = "euler_multi_quadrants_periodicBC"
SHEAR = "shear_flow"
GRAY_SCOTT = "gray_scott_reaction_diffusion"


def _arm(mode: str, pretrain: str, compression: tuple[int, int]) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(mode=mode, pretrain=pretrain, compression=tuple(compression)))


def _study_block(s_main: int, s_sweep: tuple[int, ...], seeds: tuple[int, ...]) -> ml_collections.ConfigDict:
    st = ml_collections.ConfigDict()
    st.seeds = tuple(seeds)
    st.pretrain = ml_collections.ConfigDict(dict(
        in_domain=(EULER,), out_of_domain=(SHEAR,), mixed=(SHEAR, GRAY_SCOTT)))
    st.pretrain_order = ("in_domain", "out_of_domain", "mixed")
    arms = {
        "scratch": _arm("scratch", "", (1, s_main)),
        "in_domain_finetune": _arm("finetune", "in_domain", (1, s_main)),
        "in_domain_frozen": _arm("frozen", "in_domain", (1, s_main)),
        "out_of_domain_finetune": _arm("finetune", "out_of_domain", (1, s_main)),
        "mixed_finetune": _arm("finetune", "mixed", (1, s_main)),
    }
    order = list(arms)
    for s in s_sweep:
        if s != s_main:
            arms[f"in_domain_finetune_s{s}"] = _arm("finetune", "in_domain", (1, s))
            order.append(f"in_domain_finetune_s{s}")
    st.arms = ml_collections.ConfigDict(arms)
    st.arm_order = tuple(order)
    st.baseline = "scratch"
    st.sweep_main = s_main                 # the in_domain_finetune arm is the sweep's s=s_main point
    st.docs_dir = "docs"
    # JAX's persistent compilation cache under <study>/jax_cache: seeds after the first reuse the compiled steps.
    st.compilation_cache = True
    return st


def get_config(arg: str = ""):
    variant = arg or "small"
    c = base_config()
    if variant == "small":
        c.data.well_base_path = "data/study"
        c.data.batch_size = 8
        c.data.generate.resolution = 32
        c.model.tokeniser.update(widths=(16, 32), latent_channels=16, depth=0, spatial_factors=(4, 8),
                                 temporal_factors=(1,))
        c.model.processor.update(d_model=64, num_layers=2, num_heads=4, mlp_ratio=2)
        c.ae.update(n_frames=1, steps=2000, compressions=((1, 4), (1, 8)), eval_compressions=((1, 4), (1, 8)),
                    log_every=250, ckpt_every=500, eval_batches=8)
        c.ae.optimizer = optimizer_config("soap", 2e-3, c.ae.steps)
        c.dyn.update(steps=250, n_steps_input=4, log_every=50, ckpt_every=125, eval_every=50, eval_batches=4,
                     rollout_max_steps=40)
        c.dyn.optimizer = optimizer_config("adamw", 1e-3, c.dyn.steps)
        c.study = _study_block(4, (4, 8), (0, 1, 2))
    elif variant == "paper":
        c.data.well_base_path = "/data/the_well/datasets"
        c.data.generate_missing = False
        c.data.batch_size = 64
        c.data.num_workers = 8
        c.model.tokeniser.update(widths=(128, 256, 512), latent_channels=64, depth=2,
                                 spatial_factors=(4, 8, 16, 32), temporal_factors=(1, 2))
        c.model.processor.update(d_model=768, num_layers=12, num_heads=12, mlp_ratio=4)
        c.ae.update(steps=20000, ckpt_every=1000, log_every=100, eval_batches=32)
        c.ae.optimizer = optimizer_config("soap", 1e-3, c.ae.steps)
        c.dyn.update(steps=10500, compression=(1, 16), ckpt_every=1500, log_every=100, eval_every=500,
                     eval_batches=16, rollout_max_steps=100)
        c.dyn.optimizer = optimizer_config("adamw", 3e-4, c.dyn.steps)
        c.mesh.shape = (1, -1, 1)
        c.mesh.rules = "fsdp"
        c.study = _study_block(16, (16, 32), (0, 1, 2))
    else:
        raise ValueError(f"configs/study.py: unknown variant {variant!r}; expected 'small' or 'paper'")
    return c
