"""guided-diffusion's training (scripts/image_train.py, train_util.TrainLoop) with DDPM-IP's input
perturbation, resumable exactly.

`create_model` and `training_losses` are the entry points independent checks import. `train`
is the library behind image_train.py: AdamW, an EMA for every rate, microbatches, loss
scaling with --use_fp16, the uniform and loss-second-moment timestep samplers, and
guided-diffusion's checkpoint files. Unlike guided-diffusion, every random draw is seeded by
(seed, update, sample index in the global batch) and the data order by (seed, epoch), and a
save records what else the run's future depends on (the update count, the sampler's loss
history, the loss scale), so a run resumed from a save reaches the weights of the
uninterrupted run, and 2 processes give the weights of 1 with the same global batch.
docs/training.md lists where this departs from guided-diffusion.
"""

import dataclasses
import datetime
import json
import os
import re
import tempfile

import numpy as np
import torch

from safeload.checkpoints import CheckpointError, read_weights_only
from torch_utils import distributed as dist
from training.adm_data import TrainingImages
from training.adm_diffusion import Diffusion, diffusion_from_flags, diffusion_losses, training_losses  # noqa: F401
from training.adm_model import GuidedUNet, create_model, ema_name  # noqa: F401
from networks import adm

SCHEDULE_SAMPLERS = ('uniform', 'loss-second-moment')
HISTORY = 10            # loss-second-moment: losses kept per timestep.
UNIFORM_PROB = 0.001    # loss-second-moment: share of the uniform distribution mixed in.
INITIAL_LG_LOSS_SCALE = 20.0


class TrainError(ValueError):
    """Training options or files that cannot be used; the message is one line."""


@dataclasses.dataclass
class TrainOptions:
    """image_train.py's options beyond the model and diffusion flags (guided-diffusion's defaults)."""
    data_dir: str = ''
    schedule_sampler: str = 'uniform'
    lr: float = 1e-4
    weight_decay: float = 0.0
    lr_anneal_steps: int = 0
    batch_size: int = 1                 # Per process, as guided-diffusion's.
    microbatch: int = -1                # -1 = the whole batch.
    ema_rate: str = '0.9999'            # Comma list.
    log_interval: int = 10
    save_interval: int = 10000
    resume_checkpoint: str = ''
    use_fp16: bool = False
    fp16_scale_growth: float = 1e-3
    input_pertub: float = 0.0           # DDPM-IP's gamma.
    log_dir: str = ''                   # '' = $OPENAI_LOGDIR, else a new openai-DATE folder in the temp folder.
    seed: int = 0
    max_steps: int = 0                  # Stop after this many updates in all (0 = lr_anneal_steps or never).
    num_classes: int = adm.NUM_CLASSES  # Class count with --class_cond (guided-diffusion 1000, DDPM-IP 10).
    progress: bool = True

    def ema_rates(self):
        try:
            rates = [float(part) for part in str(self.ema_rate).split(',')]
        except ValueError:
            raise TrainError(f'--ema_rate must be comma-separated numbers, got "{self.ema_rate}"') from None
        if not all(0 <= r < 1 for r in rates):
            raise TrainError(f'--ema_rate values must be in [0, 1), got "{self.ema_rate}"')
        return rates

    def check(self):
        if self.schedule_sampler not in SCHEDULE_SAMPLERS:
            raise TrainError(f'--schedule_sampler must be uniform or loss-second-moment, got "{self.schedule_sampler}"')
        for name in ('batch_size', 'log_interval', 'save_interval'):
            if getattr(self, name) < 1:
                raise TrainError(f'--{name} must be positive, got {getattr(self, name)}')
        for name in ('lr_anneal_steps', 'max_steps', 'weight_decay', 'fp16_scale_growth', 'input_pertub'):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise TrainError(f'--{name} must be a finite number >= 0, got {value}')
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise TrainError(f'--lr must be positive, got {self.lr}')
        if self.microbatch == 0 or self.microbatch < -1:
            raise TrainError(f'--microbatch must be positive or -1, got {self.microbatch}')
        self.ema_rates()

#----------------------------------------------------------------------------
# Per-sample draws and timestep samplers.


def sample_generator(seed, step, index):
    """The generator of sample `index` of the global batch of update `step`."""
    state = np.random.SeedSequence([int(seed), int(step), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def epoch_order(seed, epoch, num_images):
    """The data order of an epoch: a permutation seeded by (seed, epoch)."""
    state = np.random.SeedSequence([int(seed), 1 << 31, int(epoch)]).generate_state(2, dtype=np.uint32)
    return torch.randperm(num_images, generator=torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1])))


class UniformSampler:
    """guided-diffusion's UniformSampler: every timestep with probability 1/T, weight 1."""

    def __init__(self, num_timesteps):
        self.num_timesteps = num_timesteps

    def weights(self):
        return np.ones([self.num_timesteps], dtype=np.float64)

    def update(self, t, losses):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def probabilities(self):
        w = self.weights()
        return w / w.sum()


class LossSecondMomentSampler(UniformSampler):
    """guided-diffusion's LossSecondMomentResampler (with int64 where it uses the removed np.int):
    uniform until every timestep has HISTORY losses, then p_t proportional to sqrt(E[loss^2])."""

    def __init__(self, num_timesteps):
        super().__init__(num_timesteps)
        self.history = np.zeros([num_timesteps, HISTORY], dtype=np.float64)
        self.counts = np.zeros([num_timesteps], dtype=np.int64)

    def weights(self):
        if not (self.counts == HISTORY).all():
            return np.ones([self.num_timesteps], dtype=np.float64)
        weights = np.sqrt(np.mean(self.history ** 2, axis=-1))
        weights /= np.sum(weights)
        weights *= 1 - UNIFORM_PROB
        weights += UNIFORM_PROB / len(weights)
        return weights

    def update(self, t, losses):
        for t_i, loss in zip(t, losses):
            if self.counts[t_i] == HISTORY:
                self.history[t_i, :-1] = self.history[t_i, 1:]  # drop the oldest
                self.history[t_i, -1] = loss
            else:
                self.history[t_i, self.counts[t_i]] = loss
                self.counts[t_i] += 1

    def state_dict(self):
        return dict(history=torch.from_numpy(self.history.copy()), counts=torch.from_numpy(self.counts.copy()))

    def load_state_dict(self, state):
        history, counts = state.get('history'), state.get('counts')
        if history is None or counts is None:
            return
        if tuple(history.shape) != self.history.shape or tuple(counts.shape) != self.counts.shape:
            raise TrainError('the saved loss-second-moment history does not fit --diffusion_steps')
        self.history = history.numpy().astype(np.float64)
        self.counts = counts.numpy().astype(np.int64).clip(0, HISTORY)


def make_sampler(name, num_timesteps):
    return (LossSecondMomentSampler if name == 'loss-second-moment' else UniformSampler)(num_timesteps)


def draw_timestep(generator, probabilities):
    """t ~ probabilities from one uniform draw (inverse CDF), and guided-diffusion's weight 1 / (T p_t)."""
    u = torch.rand([], generator=generator, dtype=torch.float64).item()
    t = int(min(np.searchsorted(np.cumsum(probabilities), u * probabilities.sum(), side='right'), len(probabilities) - 1))
    return t, 1.0 / (len(probabilities) * probabilities[t])

#----------------------------------------------------------------------------
# Files.


def checkpoint_names(number, rates):
    """guided-diffusion's file names of save `number`, and the toolkit's resume record."""
    names = dict(model=f'model{number:06d}.pt', opt=f'opt{number:06d}.pt', state=f'train_state{number:06d}.pt')
    names.update({f'ema_{rate}': f'ema_{ema_name(rate)}_{number:06d}.pt' for rate in rates})
    return names


def resume_step_of(path):
    """guided-diffusion's parse_resume_step_from_filename: the number after the last 'model'."""
    match = re.search(r'model(\d+)\.pt$', os.path.basename(path))
    if match is None:
        raise TrainError(f'--resume_checkpoint {path}: expected a file named modelNNNNNN.pt')
    return int(match.group(1))


def _read(path, what):
    try:
        return read_weights_only(path)
    except CheckpointError as err:
        raise TrainError(f'{what}: {err}') from None


def _save_all(log_dir, payloads):
    """torch.save every {file name: object} through temporary files, renamed only when all are written."""
    temps = {}
    try:
        for name, obj in payloads.items():
            fd, tmp = tempfile.mkstemp(dir=log_dir, prefix=f'.{name}.', suffix='.tmp')
            os.close(fd)
            temps[name] = tmp
            torch.save(obj, tmp)
        for name, tmp in temps.items():
            os.replace(tmp, os.path.join(log_dir, name))
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.remove(tmp)


def default_log_dir():
    """guided-diffusion's logger folder: $OPENAI_LOGDIR, else openai-DATE in the temp folder."""
    return os.environ.get('OPENAI_LOGDIR') or os.path.join(
        tempfile.gettempdir(), datetime.datetime.now().strftime('openai-%Y-%m-%d-%H-%M-%S-%f'))

#----------------------------------------------------------------------------
# The loop.


class _Logger:
    """Means over the updates between dumps of guided-diffusion's keys, as JSON lines."""

    def __init__(self, path, enabled):
        self.path, self.enabled, self.sums, self.counts = path, enabled, {}, {}

    def add(self, key, value, count=1):
        self.sums[key] = self.sums.get(key, 0.0) + float(value) * count
        self.counts[key] = self.counts.get(key, 0) + count

    def dump(self, **fixed):
        row = {**fixed, **{k: self.sums[k] / self.counts[k] for k in sorted(self.sums)}}
        self.sums, self.counts = {}, {}
        if self.enabled:
            with open(self.path, 'a') as f:
                f.write(json.dumps(row) + '\n')
        return row


def _log_losses(logger, diffusion, t, terms):
    """guided-diffusion's log_loss_dict: each (weighted) term's mean and its quartile means."""
    for key, values in terms.items():
        logger.add(key, values.mean(), len(values))
        quartiles = (4 * t.double() / diffusion.num_timesteps).long()
        for q in range(4):
            chosen = values[quartiles == q]
            if len(chosen):
                logger.add(f'{key}_q{q}', chosen.mean(), len(chosen))


def _gather(tensor):
    """The rank-ordered concatenation of every rank's `tensor` (same shape on all ranks)."""
    if dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    torch.distributed.all_gather(parts, tensor)
    return torch.cat(parts)


def _lr_for_update(options, step):
    """guided-diffusion's annealing: update 0 and 1 use lr, update i > 0 lr (1 - (i - 1) / lr_anneal_steps)."""
    if not options.lr_anneal_steps or step == 0:
        return options.lr
    return options.lr * (1 - (step - 1) / options.lr_anneal_steps)


def train(flags, options, device=None, note=print):
    """Train a guided-diffusion model; return {'updates', 'log_dir', 'files', 'last'}.

    `flags`: guided-diffusion's model and diffusion flags (dict); `options`: TrainOptions.
    Runs in the torchrun process group if one is set up (torch_utils.distributed)."""
    options.check()
    rates = options.ema_rates()
    flags = {**flags, 'use_fp16': options.use_fp16}
    diffusion = diffusion_from_flags(**flags, input_pertub=options.input_pertub)
    device = torch.device(device) if device is not None else dist.device()
    rank, world = dist.get_rank(), dist.get_world_size()
    if options.use_fp16 and device.type != 'cuda':
        note('--use_fp16 True: float16 needs a CUDA device; training in float32 (with guided-diffusion\'s loss scaling)')

    torch.manual_seed(options.seed)  # the initial weights, the same on every rank
    model = create_model(flags, num_classes=options.num_classes)
    class_cond = bool(model.num_classes)
    data = TrainingImages(options.data_dir, model.flags.image_size, class_cond, model.num_classes or None)
    global_batch = options.batch_size * world
    if len(data) < global_batch:
        raise TrainError(f'{options.data_dir}: {len(data)} image(s), fewer than the global batch of {global_batch}')
    steps_per_epoch = len(data) // global_batch  # drop_last

    sampler = make_sampler(options.schedule_sampler, diffusion.num_timesteps)
    opt_state, ema_states, updates, lg_loss_scale = None, None, 0, INITIAL_LG_LOSS_SCALE
    if options.resume_checkpoint:
        path = options.resume_checkpoint
        number = resume_step_of(path)
        state = _read(path, '--resume_checkpoint')
        model.check_state_dict(state, os.path.basename(path))
        model.load_state_dict(state)
        folder = os.path.dirname(path)
        names = checkpoint_names(number, rates)
        ema_states = [_read(os.path.join(folder, names[f'ema_{r}']), 'EMA') if os.path.exists(os.path.join(folder, names[f'ema_{r}']))
                      else None for r in rates]
        for ema in ema_states:
            if ema is not None:
                model.check_state_dict(ema, f'EMA of {os.path.basename(path)}')
        if os.path.exists(os.path.join(folder, names['opt'])):
            opt_state = _read(os.path.join(folder, names['opt']), 'optimizer file')
            if not isinstance(opt_state, dict):
                raise TrainError(f'{names["opt"]} beside {path} is not an optimizer state dict')
        updates = number + 1  # guided-diffusion's in-loop saves: file N holds N + 1 updates
        if os.path.exists(os.path.join(folder, names['state'])):
            record = _read(os.path.join(folder, names['state']), 'training state')
            if not isinstance(record, dict) or not isinstance(record.get('sampler', {}), dict):
                raise TrainError(f'{names["state"]} beside {path} is not a training state written by image_train.py')
            updates = int(record.get('updates', updates))
            lg_loss_scale = float(record.get('lg_loss_scale', lg_loss_scale))
            sampler.load_state_dict(record.get('sampler', {}))
        else:
            note(f'{os.path.basename(path)} has no {names["state"]} beside it: resuming at update {updates} '
                 f'with a fresh sampler history and loss scale (not an exact resume)')

    model = model.to(device).train()
    params = list(model.parameters())
    ema_params = [[p.detach().clone() for p in params] for _ in rates]
    for ema, saved in zip(ema_params, ema_states or []):
        if saved is not None:
            for target, (name, _) in zip(ema, model.named_parameters()):
                target.copy_(saved[name])
    opt = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    if opt_state is not None:
        try:
            opt.load_state_dict(opt_state)
        except (ValueError, KeyError, RuntimeError, TypeError) as err:
            raise TrainError(f'the optimizer file beside {options.resume_checkpoint} does not fit this model '
                             f'({str(err).splitlines()[0]})') from None
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == 'cuda' else None,
                                                        broadcast_buffers=False)

    log_dir = options.log_dir or default_log_dir()
    if world > 1:
        box = [log_dir]
        torch.distributed.broadcast_object_list(box, src=0)
        log_dir = box[0]
    if rank == 0:
        os.makedirs(log_dir, exist_ok=True)
    dist.barrier()
    logger = _Logger(os.path.join(log_dir, 'progress.jsonl'), rank == 0)
    files = []

    def save(number):
        names = checkpoint_names(number, rates)
        if rank == 0:
            named = [name for name, _ in model.named_parameters()]
            payloads = {names['model']: {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            for rate, ema in zip(rates, ema_params):
                payloads[names[f'ema_{rate}']] = {name: p.detach().cpu().clone() for name, p in zip(named, ema)}
            payloads[names['opt']] = opt.state_dict()
            payloads[names['state']] = dict(updates=updates, lg_loss_scale=lg_loss_scale, seed=options.seed,
                                            sampler=sampler.state_dict())
            _save_all(log_dir, payloads)
            files.extend(names.values())
        dist.barrier()

    last_saved, first_update = None, updates
    stop = lambda: ((options.lr_anneal_steps and updates >= options.lr_anneal_steps) or
                    (options.max_steps and updates >= options.max_steps))
    total = options.max_steps or options.lr_anneal_steps or None
    bar = None
    if options.progress and rank == 0:
        import tqdm
        bar = tqdm.tqdm(total=total, initial=updates, unit='step', dynamic_ncols=True)
    microbatch = options.batch_size if options.microbatch == -1 else options.microbatch
    try:
        while not stop():
            step = updates
            probabilities = sampler.probabilities()
            opt.zero_grad(set_to_none=False)
            epoch, within = divmod(step, steps_per_epoch)
            order = epoch_order(options.seed, epoch, len(data))
            my_slots = range(rank * options.batch_size, (rank + 1) * options.batch_size)
            record_t, record_terms = [], {}
            chunks = [my_slots[i:i + microbatch] for i in range(0, len(my_slots), microbatch)]
            for c, chunk in enumerate(chunks):
                images, labels, ts, weights, noises, perturbs = [], [], [], [], [], []
                for k in chunk:
                    gen = sample_generator(options.seed, step, k)
                    index = int(order[within * global_batch + k])
                    t, w = draw_timestep(gen, probabilities)
                    flip = bool(torch.rand([], generator=gen) < 0.5)
                    image = data.image(index)
                    images.append(np.ascontiguousarray(image[:, :, ::-1]) if flip else image)
                    labels.append(data.label(index))
                    ts.append(t)
                    weights.append(w)
                    noises.append(torch.randn(image.shape, generator=gen))
                    if diffusion.input_pertub:
                        perturbs.append(torch.randn(image.shape, generator=gen))
                x = torch.from_numpy(np.stack(images)).to(device).to(torch.float32) / 127.5 - 1
                t = torch.tensor(ts, device=device)
                w = torch.tensor(weights, dtype=torch.float32, device=device)
                noise = torch.stack(noises).to(device)
                perturb = torch.stack(perturbs).to(device) if perturbs else None
                kwargs = dict(y=torch.tensor(labels, device=device)) if class_cond else {}
                sync = world == 1 or c == len(chunks) - 1
                with _maybe_no_sync(ddp, not sync):
                    terms = diffusion_losses(diffusion, ddp, x, t, noise, perturb, kwargs)
                    loss = (terms['loss'] * w).mean()
                    (loss * (2 ** lg_loss_scale if options.use_fp16 else 1)).backward()
                record_t.append(t.detach().cpu())
                for key, value in terms.items():
                    record_terms.setdefault(key, []).append((value.detach() * w).cpu())
                record_terms.setdefault('_raw', []).append(terms['loss'].detach().cpu())

            # Every rank sees the global batch's timesteps and losses, in global order.
            all_t = _gather(torch.cat(record_t).to(device)).cpu()
            gathered = {key: _gather(torch.cat(parts).to(device)).cpu() for key, parts in record_terms.items()}
            sampler.update(all_t.tolist(), gathered.pop('_raw').double().tolist())

            scale = 2 ** lg_loss_scale if options.use_fp16 else 1.0
            grad_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item() / scale
            took_step = True
            if options.use_fp16 and not np.isfinite(grad_norm):
                lg_loss_scale -= 1
                opt.zero_grad(set_to_none=False)
                took_step = False
            else:
                if options.use_fp16:
                    for p in params:
                        p.grad.mul_(1.0 / scale)
                for group in opt.param_groups:
                    group['lr'] = _lr_for_update(options, step)
                opt.step()
                if options.use_fp16:
                    lg_loss_scale += options.fp16_scale_growth
                with torch.no_grad():
                    for rate, ema in zip(rates, ema_params):
                        for target, p in zip(ema, params):
                            target.mul_(rate).add_(p.detach(), alpha=1 - rate)
            updates = step + 1
            param_norm = torch.sqrt(sum((p.detach().double() ** 2).sum() for p in params)).item()
            logger.add('grad_norm', grad_norm)
            logger.add('param_norm', param_norm)
            if options.use_fp16:
                logger.add('lg_loss_scale', lg_loss_scale)
            _log_losses(logger, diffusion, all_t, gathered)
            if not took_step:
                note(f'update {step}: non-finite gradients, loss scale lowered to 2^{lg_loss_scale:g}, step skipped')
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f'{gathered["loss"].mean().item():.4f}')
            if step % options.log_interval == 0:
                logger.dump(step=step, samples=(step + 1) * global_batch)
            if step % options.save_interval == 0:
                save(step)
                last_saved = step
        if updates > first_update and last_saved != updates - 1:
            save(updates)  # guided-diffusion names the final save by the update count
    finally:
        if bar is not None:
            bar.close()
    return dict(updates=updates, log_dir=log_dir, files=files)


class _maybe_no_sync:
    """DDP's no_sync() for all but the last microbatch (gradients are reduced once per update)."""

    def __init__(self, ddp, skip):
        self.context = ddp.no_sync() if skip and hasattr(ddp, 'no_sync') else None

    def __enter__(self):
        return self.context.__enter__() if self.context is not None else None

    def __exit__(self, *exc):
        return self.context.__exit__(*exc) if self.context is not None else False
