"""Stage 2: train the emulator (tokeniser -> processor -> decoder) for next-step prediction.

``dyn.tokeniser`` picks how the tokeniser starts:

- ``scratch``: fresh initialisation, everything trained jointly (the paper's baseline);
- ``finetune``: ``params['tokeniser']`` restored from the AE stage's checkpoint, then trained on;
- ``frozen``: restored and fixed; only the processor gets gradients and optimiser state. With
  ``dyn.cache_latents`` the training windows are encoded once by the frozen encoder and the processor trains on
  those latents (loss in latent space, as "Lost in Latent Space" does), which skips the encoder and decoder.

The warm start is one visible line, ``params['tokeniser'] = restored`` (see ``warm_start``), after a check that
names every mismatching path. The stage ends with an autoregressive rollout on the test split: VRMSE per step and
per The Well's time window, in physical units, printed and written to ``<workdir>/dyn/rollout.json``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np

from tokpre import sharding as shd
from tokpre.checkpoint import StageCheckpointer, check_tree_compatible, path_shapes, vocab_permutation
from tokpre.data import pipeline, well
from tokpre.data.fields import FieldVocab
from tokpre.eval import metrics, rollout
from tokpre.train import common, loop
from tokpre.train.optim import make_optimizer
from tokpre.train.state import create_sharded_state, make_train_step

STAGE = "dyn"
MODES = ("scratch", "finetune", "frozen")


def emulator_from_config(cfg):
    from tokpre.models.emulator import Emulator
    from tokpre.models.processor import Processor
    p = cfg.model.processor
    proc = Processor(d_model=int(p.d_model), num_layers=int(p.num_layers), num_heads=int(p.num_heads),
                     mlp_ratio=int(p.mlp_ratio), latent_channels=int(cfg.model.tokeniser.latent_channels),
                     predict_increment=bool(p.predict_increment))
    return Emulator(tokeniser=common.tokeniser_from_config(cfg), processor=proc)


def compression_of(cfg) -> tuple[int, int]:
    comp = tuple(int(v) for v in cfg.dyn.compression)
    allowed = common.all_compressions(cfg)
    if comp not in allowed:
        raise ValueError(f"config key dyn.compression={comp} is not allowed by model.tokeniser "
                         f"(temporal_factors x spatial_factors = {allowed})")
    if int(cfg.dyn.n_steps_input) % comp[0]:
        raise ValueError(f"config key dyn.n_steps_input={cfg.dyn.n_steps_input} must be a multiple of the "
                         f"temporal compression t={comp[0]} (dyn.compression)")
    return comp


def init_fn(model, cfg, comp):
    d = int(cfg.model.tokeniser.n_spatial_dims)
    s_max = max(int(s) for s in cfg.model.tokeniser.spatial_factors)
    x = jnp.zeros((1, int(cfg.dyn.n_steps_input), *(s_max,) * d, 1), jnp.float32)
    ids = jnp.zeros((1,), jnp.int32)

    def init(key):
        return model.init(key, x, ids, periodic=(True,) * d, compression=comp)["params"]

    return init


def frame_loss(pred, y, x_last, kind: str):
    """'mse' on the next frame(s), or 'increment': MSE of the increment scaled per channel by its batch RMS."""
    if kind == "mse":
        return jnp.mean((pred - y) ** 2)
    if kind == "increment":
        red = tuple(range(y.ndim - 1))
        scale = jnp.mean((y - x_last) ** 2, axis=red) + 1e-6                 # (C,)
        return jnp.mean(jnp.mean((pred - y) ** 2, axis=red) / scale)
    raise ValueError(f"config key dyn.loss: expected 'mse' or 'increment', found {kind!r}")


def make_field_loss(model, *, periodic, comp, kind):
    def loss_fn(params, batch, rng):
        x, y = batch["input_fields"], batch["output_fields"]      # (B, Ti, *N, C), (B, t, *N, C)
        pred = model.apply({"params": params}, x, batch["field_ids"], periodic=periodic, compression=comp)
        return frame_loss(pred, y, x[:, -1:], kind), {"mse": jnp.mean((pred - y) ** 2)}
    return loss_fn


def make_latent_loss(model):
    def loss_fn(params, batch, rng):
        z_in, z_out = batch["z_in"], batch["z_out"]               # (B, T', *n, L), (B, 1, *n, L)
        pred = model.apply({"params": params}, z_in, method="process")
        lval = jnp.mean((pred - z_out) ** 2)
        return lval, {"latent_mse": lval}
    return loss_fn


# ------------------------------------------------------------------------------------------------ warm start

def ae_checkpoint_dir(cfg, workdir: Path) -> Path:
    return Path(cfg.dyn.ae_checkpoint) if cfg.dyn.ae_checkpoint else Path(workdir) / "ae" / "checkpoints"


def vocab_rows(boxed_abstract) -> set[str]:
    """Paths of field-indexed tables (first logical axis 'vocab') in a boxed parameter tree."""
    import flax.linen as nn
    out = set()
    for p, v in jax.tree_util.tree_flatten_with_path(
            boxed_abstract, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]:
        if isinstance(v, nn.LogicallyPartitioned) and v.names and v.names[0] == "vocab":
            out.add(jax.tree_util.keystr(p))
    return out


def restore_tokeniser(ae_dir: Path, target_params, target_shardings, *, vocab_paths: set[str],
                      vocab: FieldVocab):
    """Restores the AE checkpoint's ``{'encoder','decoder'}`` into the given abstract tree and shardings.

    Checks structure and shapes first (``TreeMismatchError`` names every mismatching path). Arrays are restored
    straight into ``target_shardings`` (each process reads only its shards), so nothing is gathered on one host.
    Field-indexed tables are re-ordered by field name when the AE's vocabulary numbered a field differently.
    """
    ckpt = StageCheckpointer(ae_dir)
    if ckpt.latest_step() is None:
        raise FileNotFoundError(f"dyn.tokeniser needs an AE checkpoint, found none in {ae_dir} (set config key "
                                f"dyn.ae_checkpoint, or run the 'ae' stage first, e.g. stages=('ae', 'dyn'))")
    found = ckpt.stored_param_shapes()
    check_tree_compatible(found, path_shapes(target_params), what=f"AE checkpoint {ae_dir}")
    restored = ckpt.restore_params(None, target_params, target_shardings)
    meta = ckpt.restore_meta()
    ckpt.close()
    if meta.get("vocab"):
        src = FieldVocab(meta["vocab"])
        flat, treedef = jax.tree_util.tree_flatten_with_path(restored)
        leaves = []
        for p, v in flat:
            perm = vocab_permutation(src, vocab, v.shape[0]) if jax.tree_util.keystr(p) in vocab_paths else None
            leaves.append(v if perm is None else jax.jit(lambda a, q=perm: a[q], out_shardings=v.sharding)(v))
        restored = jax.tree_util.tree_unflatten(treedef, leaves)
    return restored


def warm_start(state, restored_tokeniser):
    """Stage two's warm start: ``params['tokeniser'] = restored_ae_params``."""
    params = dict(state.params)
    params["tokeniser"] = restored_tokeniser
    return state.replace(params=params)


def build(cfg, mesh):
    model = emulator_from_config(cfg)
    comp = compression_of(cfg)
    mode = str(cfg.dyn.tokeniser)
    if mode not in MODES:
        raise ValueError(f"config key dyn.tokeniser: expected one of {MODES}, found {mode!r}")
    trainable = ("processor",) if mode == "frozen" else None
    tx, _ = make_optimizer(cfg.dyn.optimizer)
    rules = shd.get_rules(cfg.mesh.rules)
    init = init_fn(model, cfg, comp)
    state, state_sh = create_sharded_state(init, tx, mesh, rules, int(cfg.seed) + 1, trainable=trainable)
    return model, comp, mode, trainable, tx, init, state, state_sh


# ------------------------------------------------------------------------------------------------ latent cache

class _Latents:
    """Random-access source over cached latents (host numpy)."""

    def __init__(self, z_in: np.ndarray, z_out: np.ndarray):
        self.z_in, self.z_out = z_in, z_out

    def __len__(self):
        return len(self.z_in)

    def __getitem__(self, i):
        return {"z_in": self.z_in[i], "z_out": self.z_out[i]}


def encode_windows(model, params, cfg, mesh, comp, periodic, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Encodes this process's share of every training window once (no augmentation) with the frozen encoder."""
    n_in, t = int(cfg.dyn.n_steps_input), comp[0]
    local_bs = common.local_batch_size(int(cfg.data.batch_size), mesh)
    n_total = well.WellSplit(cfg.data.well_base_path, dataset, "train").num_windows(n_in, t, 1)
    n_batches = common.eval_batch_count(n_total, local_bs, 0)
    batches = pipeline.make_eval_batches(cfg.data.well_base_path, dataset, split="train", n_steps_input=n_in,
                                         n_steps_output=t, batch_size=local_bs, max_batches=n_batches,
                                         log_fields=tuple(cfg.data.log_fields),
                                         vocab_size=int(cfg.model.tokeniser.vocab_size),
                                         shard_index=jax.process_index(), shard_count=jax.process_count())

    @jax.jit
    def enc(params, x, y, ids):
        z = model.apply({"params": params}, jnp.concatenate([x, y], axis=1), ids, periodic=periodic,
                        compression=comp, method="encode")        # (B, (Ti + t) / t, *n, L); causal in time
        return z[:, :-1], z[:, -1:]

    def local(a):  # this process's rows of a batch-sharded global array
        if jax.process_count() == 1:
            return np.asarray(a)
        return np.concatenate([np.asarray(s.data) for s in a.addressable_shards])

    zi, zo = [], []
    for b in batches:
        gb = shd.global_batch({k: b[k] for k in ("input_fields", "output_fields", "field_ids")}, mesh)
        a, c = enc(params, gb["input_fields"], gb["output_fields"], gb["field_ids"])
        zi.append(local(a))
        zo.append(local(c))
    return np.concatenate(zi), np.concatenate(zo)


def latent_iterator(z_in, z_out, local_bs: int, seed: int):
    ds = grain.MapDataset.source(_Latents(z_in, z_out)).shuffle(seed=seed).repeat(None)
    ds = ds.batch(local_bs, drop_remainder=True)
    return iter(ds.to_iter_dataset())


# ------------------------------------------------------------------------------------------------ evaluation

def one_step_eval(model, params, cfg, mesh, comp, dataset: str, *, split="test") -> dict:
    """Mean one-step VRMSE (physical units) over up to ``dyn.eval_batches`` batches of ``split``, plus The Well's
    three-band spectral NMSE of the one-step error (``metrics.binned_spectral_mse``, low/mid/high wavenumbers) as
    ``nmse_band0``, ``nmse_band1``, ``nmse_band2`` (error energy / target energy per band, mean over samples, frames
    and channels)."""
    n_in, t = int(cfg.dyn.n_steps_input), comp[0]
    base = cfg.data.well_base_path
    local_bs = common.local_batch_size(int(cfg.data.batch_size), mesh)
    n_total = well.WellSplit(base, dataset, split).num_windows(n_in, t, 1)
    n_batches = common.eval_batch_count(n_total, local_bs, int(cfg.dyn.eval_batches))
    batches = pipeline.make_eval_batches(base, dataset, split=split, n_steps_input=n_in, n_steps_output=t,
                                         batch_size=local_bs, max_batches=n_batches,
                                         log_fields=tuple(cfg.data.log_fields),
                                         vocab_size=int(cfg.model.tokeniser.vocab_size),
                                         shard_index=jax.process_index(), shard_count=jax.process_count())
    norm = common.normaliser(str(base), dataset, tuple(cfg.data.log_fields))
    tot, bands, n = 0.0, np.zeros(3), 0
    for b in batches:
        periodic = common.periodic_of(b["boundary"])
        gb = shd.global_batch({k: b[k] for k in ("input_fields", "output_fields", "field_ids")}, mesh)
        v, bnd = jax.device_get(_one_step_vrmse(model, periodic, comp, norm)(
            params, gb["input_fields"], gb["output_fields"], gb["field_ids"]))
        tot += float(v)
        bands += np.asarray(bnd, np.float64)
        n += 1
    out = {"vrmse": tot / max(n, 1)}
    out.update({f"nmse_band{i}": float(bands[i] / max(n, 1)) for i in range(3)})
    return out


@functools.lru_cache(maxsize=16)
def _one_step_vrmse(model, periodic, comp, norm):
    @jax.jit
    def f(params, x, y, ids):
        pred = model.apply({"params": params}, x, ids, periodic=periodic, compression=comp)
        p, yy = norm.denormalise(pred), norm.denormalise(y)                   # (B, t, *N, C) physical units
        spec = metrics.binned_spectral_mse(p, yy)                              # {..._nmse_per_bin_i: (B, t, C)}
        bands = jnp.stack([jnp.mean(spec[f"spectral_error_nmse_per_bin_{i}"]) for i in range(3)])   # (3,)
        return jnp.mean(metrics.vrmse(p, yy)), bands
    return f


@functools.lru_cache(maxsize=16)
def emulator_step_fn(model, periodic, comp, field_ids: tuple[int, ...]):
    """A hashable ``step_fn(params, window) -> next frames`` for ``tokpre.eval.rollout``."""
    ids = np.asarray(field_ids, np.int32)

    def step_fn(params, window):
        return model.apply({"params": params}, window, jnp.asarray(ids), periodic=periodic, compression=comp)

    return step_fn


def rollout_test(model, params, cfg, mesh, comp, dataset: str, *, split="test") -> dict:
    """Autoregressive rollout from the first ``n_steps_input`` true frames of each test trajectory."""
    base = cfg.data.well_base_path
    sp = well.WellSplit(base, dataset, split)
    norm = common.normaliser(str(base), dataset, tuple(cfg.data.log_fields))
    trajs = sp.trajectories()
    k = int(cfg.dyn.rollout_trajectories)
    if k > 0:
        trajs = trajs[:k]
    t_min = min(n for _, _, n in trajs)
    data = np.stack([sp.read_trajectory(f, j)[:t_min] for f, j, _ in trajs])   # (B, T, *N, C) physical
    data = np.asarray(norm.normalise(data), np.float32)
    n_in, t = int(cfg.dyn.n_steps_input), comp[0]
    max_steps = min(int(cfg.dyn.rollout_max_steps), t_min - n_in)
    max_steps -= max_steps % t
    ids = tuple(int(i) for i in FieldVocab().ids(sp.field_names, int(cfg.model.tokeniser.vocab_size)))
    step = emulator_step_fn(model, common.periodic_of(sp.boundary), comp, ids)
    data = jax.make_array_from_process_local_data(shd.replicated(mesh), data, data.shape)
    res = rollout.rollout_eval(step, params, data[:, : n_in + max_steps], n_in, norm.denormalise,
                               sp.field_names, max_steps=max_steps, frames_per_step=t)
    return res


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist"):
        return np.asarray(x).tolist()
    return x


# ------------------------------------------------------------------------------------------------ the stage

def run_stage(cfg, workdir: Path, mesh) -> None:
    dataset = str(cfg.dyn.dataset)
    common.ensure_datasets(cfg, [dataset])
    steps = int(cfg.dyn.steps)
    opened = common.open_stage(STAGE, workdir, steps, "rollout.json")
    if opened is None:
        return
    stage_dir, report, ckpt, latest = opened

    model, comp, mode, trainable, tx, init, state, state_sh = build(cfg, mesh)
    vocab = FieldVocab()
    sp = well.WellSplit(cfg.data.well_base_path, dataset, "train")
    periodic = common.periodic_of(sp.boundary)
    local_bs = common.local_batch_size(int(cfg.data.batch_size), mesh)
    n_in, t = int(cfg.dyn.n_steps_input), comp[0]

    if latest is None and mode in ("finetune", "frozen"):
        ae_dir = ae_checkpoint_dir(cfg, workdir)
        boxed = jax.eval_shape(init, jax.random.key(0))
        paths = {p.replace("['tokeniser']", "", 1) for p in vocab_rows(boxed) if p.startswith("['tokeniser']")}
        restored = restore_tokeniser(ae_dir, state.params["tokeniser"], state_sh.params["tokeniser"],
                                     vocab_paths=paths, vocab=vocab)
        state = warm_start(state, restored)
        common.say(f"[dyn] tokeniser restored from {ae_dir} ({mode})")

    use_cache = mode == "frozen" and bool(cfg.dyn.cache_latents)
    if use_cache:
        common.say("[dyn] encoding the training windows once with the frozen encoder (latent cache)")
        z_in, z_out = encode_windows(model, state.params, cfg, mesh, comp, periodic, dataset)
        common.say(f"[dyn] cached {len(z_in)} windows as latents {z_in.shape[1:]} -> {z_out.shape[1:]} "
                   f"({(z_in.nbytes + z_out.nbytes) / 2**20:.0f} MiB)")
        it = latent_iterator(z_in, z_out, local_bs, int(cfg.seed))
        loss_fn = make_latent_loss(model)
        step_key = ("latent",)
    else:
        it = pipeline.make_train_iterator(
            cfg.data.well_base_path, dataset, n_steps_input=n_in, n_steps_output=t, batch_size=local_bs,
            seed=int(cfg.seed), min_dt=int(cfg.data.min_dt), max_dt=int(cfg.data.max_dt),
            flip=bool(cfg.data.flip), roll=bool(cfg.data.roll), log_fields=tuple(cfg.data.log_fields),
            vocab=vocab, vocab_size=int(cfg.model.tokeniser.vocab_size), shard_index=jax.process_index(),
            shard_count=jax.process_count(), num_workers=int(cfg.data.num_workers))
        loss_fn = make_field_loss(model, periodic=periodic, comp=comp, kind=str(cfg.dyn.loss))
        step_key = ("fields",)

    meta = {"stage": STAGE, "vocab": vocab.names, "dataset": dataset, "mode": mode, "compression": list(comp)}
    if latest is not None:
        state, _ = ckpt.restore(latest, state, state_sh, data_iter=it)
        common.say(f"[dyn] resumed from step {latest}")
    n_params = {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v)) for k, v in state.params.items()}
    common.say(f"[dyn] emulator on {dataset}: tokeniser {n_params['tokeniser'] / 1e6:.2f}M ({mode}), processor "
               f"{n_params['processor'] / 1e6:.2f}M parameters; compression (t={comp[0]}, s={comp[1]}); "
               f"{steps} steps, global batch {cfg.data.batch_size}")

    steps_fn = common.CompiledSteps(lambda key: make_train_step(loss_fn, tx, trainable), state_sh, mesh)

    def step_fn(st, batch):
        return steps_fn(step_key, st, batch)

    def next_batch():
        return shd.global_batch(next(it), mesh)

    eval_fn = (lambda st: one_step_eval(model, st.params, cfg, mesh, comp, dataset)) \
        if int(cfg.dyn.eval_every) else None
    state = loop.run(name=STAGE, stage_dir=stage_dir, step_fn=step_fn, state=state, next_batch=next_batch,
                     total_steps=steps, ckpt=ckpt, data_iter=it, meta=meta, log_every=int(cfg.dyn.log_every),
                     ckpt_every=int(cfg.dyn.ckpt_every), eval_every=int(cfg.dyn.eval_every), eval_fn=eval_fn)

    res = rollout_test(model, state.params, cfg, mesh, comp, dataset)
    common.say(f"Rollout VRMSE on {dataset} (test split, physical units, {res['vrmse'].shape[0]} steps, "
               f"tokeniser {mode})\n" + rollout.format_rollout_table(res))
    if jax.process_index() == 0:
        report.write_text(json.dumps(_jsonable({k: v for k, v in res.items()}), indent=2))
    ckpt.close()
