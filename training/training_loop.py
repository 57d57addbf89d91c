"""EDM's training loop: denoising loss, Adam with learning-rate ramp-up, EMA of the weights,
gradient accumulation, DDP, progress ticks, network snapshots and resumable state dumps.

Reproducibility: the global sample index s (0, 1, 2, ... over the whole run, all ranks
together) fixes both the image drawn (`ResumableSampler`) and its noise and augmentation
(`sample_seeds`), so a run gives the same parameters however many processes share the
batch (up to float rounding) and a resumed run matches an uninterrupted one exactly.
Dropout draws from torch's global generator, reseeded each iteration from (seed, rank,
images seen): it repeats on resume but depends on the process layout.
"""

import copy
import json
import math
import os
import re
import pickle
import time

import numpy as np
import psutil
import torch

import dnnlib
from torch_utils import distributed as dist
from torch_utils import misc
from torch_utils import training_stats
from training.loss import SampleRNG

STATE_FORMAT = 'edmkit-training-state/1'


def kimg_name(nimg, fractional_ticks=False):
    """The kimg part of snapshot and state dump names: EDM's whole kimg (000100), which whole-kimg
    ticks keep apart; with fractional ticks also the images beyond it (000000.512), so that no
    two snapshots get one name."""
    if not fractional_ticks or nimg % 1000 == 0:
        return f'{nimg // 1000:06d}'
    return f'{nimg // 1000:06d}.{nimg % 1000:03d}'


def nimg_of_name(text):
    """Images seen, from the kimg part of a name written by kimg_name (None if it is not one)."""
    match = re.fullmatch(r'(\d+)(?:\.(\d{3}))?', text)
    return None if match is None else int(match.group(1)) * 1000 + int(match.group(2) or 0)

#----------------------------------------------------------------------------


def _seed_from(*keys):
    """A 63-bit seed derived from non-negative integer keys."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def sample_seeds(seed, indices):
    """Seeds of the per-image generators for the global sample indices `indices`."""
    return [_seed_from(seed, 0x5A3D1E, int(s)) for s in indices]


class ResumableSampler(torch.utils.data.Sampler):
    """Endless stream of dataset indices for one rank, starting at global sample `start`.

    Global sample s is item perm_e[s mod n] with e = s div n, where perm_e is a permutation
    seeded by (seed, e): every pass over the data is freshly shuffled, and the stream can be
    restarted at any s in constant time. Rank r gets the samples with s mod world == r.
    """

    def __init__(self, dataset_size, rank=0, num_replicas=1, seed=0, start=0):
        assert dataset_size > 0 and 0 <= rank < num_replicas and start >= 0
        super().__init__()
        self.dataset_size = dataset_size
        self.rank = rank
        self.num_replicas = num_replicas
        self.seed = seed
        self.start = start

    def __iter__(self):
        n = self.dataset_size
        s = self.start + (self.rank - self.start) % self.num_replicas
        epoch, perm = None, None
        while True:
            e, i = divmod(s, n)
            if e != epoch:
                epoch, perm = e, np.random.default_rng([self.seed, e]).permutation(n)
            yield int(perm[i])
            s += self.num_replicas

#----------------------------------------------------------------------------


def load_state_dump(path):
    """Return the dict written by a state dump (tensors on the CPU). Read without torch.load,
    bounded by the file's size (safeload/unpickle.py); ValueError (one line) if invalid."""
    from safeload import unpickle as safe_unpickle
    with open(path, 'rb') as f:
        raw = f.read()
    try:
        data = safe_unpickle.load_torch_archive(raw)
    except (safe_unpickle.BadPickleError, safe_unpickle.UnsafePickleError) as err:
        raise ValueError(f'{path} is not a readable training state ({err})') from None
    if not isinstance(data, dict) or data.get('format') != STATE_FORMAT:
        raise ValueError(f'{path} is not a training state dump of this toolkit')
    _check_state_dump(data, path)
    return data


def _check_state_dump(data, path):
    """Refuse a state dump whose fields are not what training_loop writes (one line, ValueError)."""
    for key in ('cur_nimg', 'cur_tick', 'seed', 'batch_size'):
        value = data.get(key)
        if type(value) is not int or value < 0 or value >= 1 << 62:
            raise ValueError(f'{path}: "{key}" is {value!r}, not a non-negative integer')
    if data['batch_size'] < 1:
        raise ValueError(f'{path}: "batch_size" is {data["batch_size"]}')
    for key in ('net', 'ema'):
        tensors = data.get(key)
        if not isinstance(tensors, dict) or not tensors or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
            raise ValueError(f'{path}: "{key}" is not a state dict of tensors')
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise ValueError(f'{path}: "{key}.{bad[0]}" holds NaN or infinite values')
    optimizer = data.get('optimizer_state')
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get('state'), dict) or \
            not isinstance(optimizer.get('param_groups'), list):
        raise ValueError(f'{path}: "optimizer_state" is not an optimizer state dict')
    for group in optimizer['param_groups']:
        if not isinstance(group, dict) or not all(isinstance(v, (int, float, bool, str, list, tuple, type(None)))
                                                  for v in group.values()):
            raise ValueError(f'{path}: "optimizer_state" has a malformed parameter group')
        for name in ('lr', 'eps'):
            if name in group and (not isinstance(group[name], (int, float)) or not math.isfinite(group[name])):
                raise ValueError(f'{path}: optimizer "{name}" is {group[name]!r}')


def _memory_fields(device):
    fields = [f"cpumem {training_stats.report0('Resources/cpu_mem_gb', psutil.Process(os.getpid()).memory_info().rss / 2**30):<6.2f}"]
    if device.type == 'cuda':
        fields += [f"gpumem {training_stats.report0('Resources/peak_gpu_mem_gb', torch.cuda.max_memory_allocated(device) / 2**30):<6.2f}"]
        fields += [f"reserved {training_stats.report0('Resources/peak_gpu_mem_reserved_gb', torch.cuda.max_memory_reserved(device) / 2**30):<6.2f}"]
        torch.cuda.reset_peak_memory_stats()
    return fields


def training_loop(
    run_dir             = '.',      # Output directory (rank 0); None on the other ranks.
    dataset_kwargs      = {},       # Options for training.dataset.ImageFolderDataset.
    data_loader_kwargs  = {},       # Options for torch.utils.data.DataLoader.
    network_kwargs      = {},       # Options for the preconditioned network.
    loss_kwargs         = {},       # Options for the loss function.
    optimizer_kwargs    = {},       # Options for the optimizer.
    augment_kwargs      = None,     # Options for the augmentation pipeline, None = disable.
    seed                = 0,        # Global random seed.
    batch_size          = 512,      # Total batch size of one training iteration.
    batch_gpu           = None,     # Limit on the batch size per device, None = no limit.
    total_kimg          = 200000,   # Training duration in thousands of images (may be fractional).
    ema_halflife_kimg   = 500,      # Half-life of the EMA of the weights.
    ema_rampup_ratio    = 0.05,     # EMA ramp-up coefficient, None = no ramp-up.
    lr_rampup_kimg      = 10000,    # Learning-rate ramp-up duration.
    loss_scaling        = 1,        # Loss scaling factor against fp16 under/overflow.
    kimg_per_tick       = 50,       # Interval of progress prints.
    snapshot_ticks      = 50,       # How often to save network snapshots, None = disable.
    state_dump_ticks    = 500,      # How often to dump the training state, None = disable.
    resume_pkl          = None,     # Start from the weights of this network pickle, None = random init.
    allow_pickle_code   = None,     # Run code stored in resume_pkl (EDM's loading), None = $EDMKIT_ALLOW_PICKLE_CODE.
    resume_state_dump   = None,     # Continue from this training state dump, None = fresh start.
    resume_kimg         = 0,        # Progress of the run being resumed (informational; the dump has it).
    cudnn_benchmark     = True,     # Enable torch.backends.cudnn.benchmark?
    device              = None,     # Device to train on, None = the one chosen by dist.init().
):
    """Train a denoiser; writes snapshots, state dumps and stats.jsonl to run_dir on rank 0."""
    start_time = time.time()
    device = dist.device() if device is None else torch.device(device)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = cudnn_benchmark
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False

    # Batch size per device and gradient accumulation.
    batch_gpu_total = batch_size // world_size
    if batch_gpu is None or batch_gpu > batch_gpu_total:
        batch_gpu = batch_gpu_total
    num_accumulation_rounds = batch_gpu_total // batch_gpu
    assert batch_size == batch_gpu * num_accumulation_rounds * world_size, 'batch size must split evenly'

    # Progress to resume from.
    state = None
    cur_nimg, cur_tick = int(round(resume_kimg * 1000)), 0
    if resume_state_dump:
        dist.print0(f'Loading training state from "{resume_state_dump}"...')
        state = load_state_dump(resume_state_dump)
        cur_nimg, cur_tick = int(state['cur_nimg']), int(state['cur_tick'])
        assert cur_nimg % world_size == 0, 'sample indices would not line up across ranks'

    # Dataset.
    dist.print0('Loading dataset...')
    dataset_obj = dnnlib.util.construct_class_by_name(**dataset_kwargs)
    sampler = ResumableSampler(len(dataset_obj), rank=rank, num_replicas=world_size, seed=seed, start=cur_nimg)
    loader_kwargs = dict(data_loader_kwargs)
    if not loader_kwargs.get('num_workers'):
        loader_kwargs.pop('prefetch_factor', None)
        loader_kwargs.pop('persistent_workers', None)
    loader_kwargs['pin_memory'] = bool(loader_kwargs.get('pin_memory')) and device.type == 'cuda'
    dataset_iterator = iter(torch.utils.data.DataLoader(dataset=dataset_obj, sampler=sampler, batch_size=batch_gpu, **loader_kwargs))

    # Network, identical on every rank whatever the number of ranks.
    dist.print0('Constructing network...')
    torch.manual_seed(_seed_from(seed, 0x1417))
    interface_kwargs = dict(img_resolution=dataset_obj.resolution, img_channels=dataset_obj.num_channels, label_dim=dataset_obj.label_dim)
    net = dnnlib.util.construct_class_by_name(**network_kwargs, **interface_kwargs)
    net.train().requires_grad_(True).to(device)
    if rank == 0:
        with torch.no_grad():
            images = torch.zeros([batch_gpu, net.img_channels, net.img_resolution, net.img_resolution], device=device)
            sigma = torch.ones([batch_gpu], device=device)
            labels = torch.zeros([batch_gpu, net.label_dim], device=device)
            misc.print_module_summary(net, [images, sigma, labels], max_nesting=2)

    # Loss, optimizer, augmentation, EMA.
    dist.print0('Setting up optimizer...')
    loss_fn = dnnlib.util.construct_class_by_name(**loss_kwargs)
    optimizer = dnnlib.util.construct_class_by_name(params=net.parameters(), **optimizer_kwargs)
    augment_pipe = dnnlib.util.construct_class_by_name(**augment_kwargs) if augment_kwargs is not None else None
    ddp = net
    if world_size > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == 'cuda' else None)
    ema = copy.deepcopy(net).eval().requires_grad_(False)

    # Initial weights from a network pickle (--transfer), then the state dump (--resume).
    from safeload.networks import NetworkLoadError, load_network
    try:
        if resume_pkl is not None and state is None:
            dist.print0(f'Loading network weights from "{resume_pkl}"...')
            source = load_network(resume_pkl, verbose=(rank == 0), allow_pickle_code=allow_pickle_code)
            misc.copy_params_and_buffers(src_module=source, dst_module=net, require_all=False)
            misc.copy_params_and_buffers(src_module=source, dst_module=ema, require_all=False)
            del source
        if state is not None:
            net.load_state_dict(state['net'])
            ema.load_state_dict(state['ema'])
            optimizer.load_state_dict(state['optimizer_state'])
            del state
    except (RuntimeError, KeyError, ValueError, TypeError) as err:  # weights of another architecture
        what = resume_state_dump if resume_state_dump else resume_pkl
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NetworkLoadError(f'cannot start from {what}: its weights do not fit the network of these options '
                               f'({message[:200]})') from None

    # Train.
    total_nimg = int(round(total_kimg * 1000))
    if cur_nimg >= total_nimg:
        dist.print0(f'Already trained for {cur_nimg / 1000:g} of {total_kimg:g} kimg; nothing to do.')
        return
    dist.print0(f'Training for {total_kimg:g} kimg...')
    dist.print0()
    collector = training_stats.Collector(regex='.*')
    tick_start_nimg = cur_nimg
    tick_start_time = time.time()
    maintenance_time = tick_start_time - start_time
    dist.update_progress(cur_nimg // 1000, total_kimg)
    stats_jsonl = None
    while True:

        # Accumulate gradients over the rounds; sample s of the batch is global index cur_nimg + s.
        torch.manual_seed(_seed_from(seed, rank, cur_nimg))  # dropout
        optimizer.zero_grad(set_to_none=True)
        for round_idx in range(num_accumulation_rounds):
            with misc.ddp_sync(ddp, (round_idx == num_accumulation_rounds - 1)):
                images, labels = next(dataset_iterator)
                images = images.to(device).to(torch.float32) / 127.5 - 1
                labels = labels.to(device)
                first = cur_nimg // world_size + round_idx * batch_gpu
                indices = (first + np.arange(images.shape[0])) * world_size + rank
                rng = SampleRNG(sample_seeds(seed, indices), device=device)
                loss = loss_fn(net=ddp, images=images, labels=labels, augment_pipe=augment_pipe, rng=rng)
                training_stats.report('Loss/loss', loss)
                loss.sum().mul(loss_scaling / batch_gpu_total).backward()

        # Update weights.
        for g in optimizer.param_groups:
            g['lr'] = optimizer_kwargs['lr'] * min(cur_nimg / max(lr_rampup_kimg * 1000, 1e-8), 1)
        for param in net.parameters():
            if param.grad is not None:
                torch.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
        optimizer.step()

        # Update EMA: beta = 0.5 ** (batch / half-life), half-life ramped up with the images seen.
        ema_halflife_nimg = ema_halflife_kimg * 1000
        if ema_rampup_ratio is not None:
            ema_halflife_nimg = min(ema_halflife_nimg, cur_nimg * ema_rampup_ratio)
        ema_beta = 0.5 ** (batch_size / max(ema_halflife_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p_net in zip(ema.parameters(), net.parameters()):
                p_ema.copy_(p_net.detach().lerp(p_ema, ema_beta))

        # Maintenance once per tick.
        cur_nimg += batch_size
        done = (cur_nimg >= total_nimg)
        if (not done) and (cur_tick != 0) and (cur_nimg < tick_start_nimg + kimg_per_tick * 1000):
            continue

        # Status line; the same numbers go to stats.jsonl.
        tick_end_time = time.time()
        sec_per_kimg = (tick_end_time - tick_start_time) / (cur_nimg - tick_start_nimg) * 1e3
        fields = []
        fields += [f"tick {training_stats.report0('Progress/tick', cur_tick):<5d}"]
        fields += [f"kimg {training_stats.report0('Progress/kimg', cur_nimg / 1e3):<9.1f}"]
        fields += [f"time {dnnlib.util.format_time(training_stats.report0('Timing/total_sec', tick_end_time - start_time)):<12s}"]
        fields += [f"sec/tick {training_stats.report0('Timing/sec_per_tick', tick_end_time - tick_start_time):<7.1f}"]
        fields += [f"sec/kimg {training_stats.report0('Timing/sec_per_kimg', sec_per_kimg):<7.2f}"]
        fields += [f"maintenance {training_stats.report0('Timing/maintenance_sec', maintenance_time):<6.1f}"]
        memory = _memory_fields(device)
        collector.update()
        fields += [f"loss {collector['Loss/loss']:<8.4f}"] + memory
        dist.print0(' '.join(fields), flush=True)

        if (not done) and dist.should_stop():
            done = True
            dist.print0()
            dist.print0('Aborting...')

        # Network snapshot in EDM's pickle format.
        if (snapshot_ticks is not None) and (done or cur_tick % snapshot_ticks == 0):
            data = dict(ema=ema, loss_fn=loss_fn, augment_pipe=augment_pipe, dataset_kwargs=dict(dataset_kwargs))
            for key, value in data.items():
                if isinstance(value, torch.nn.Module):
                    value = copy.deepcopy(value).eval().requires_grad_(False)
                    if world_size > 1:
                        misc.check_ddp_consistency(value)
                    data[key] = value.cpu()
                del value
            if rank == 0:
                with dnnlib.util.atomic_write(os.path.join(run_dir, f'network-snapshot-{kimg_name(cur_nimg, kimg_per_tick != int(kimg_per_tick))}.pkl')) as f:
                    pickle.dump(data, f)
            del data

        # Full training state, enough to continue exactly.
        if (state_dump_ticks is not None) and (done or cur_tick % state_dump_ticks == 0) and cur_tick != 0 and rank == 0:
            state = dict(format=STATE_FORMAT, net=net.state_dict(), ema=ema.state_dict(), optimizer_state=optimizer.state_dict(),
                         cur_nimg=cur_nimg, cur_tick=cur_tick + 1, seed=seed, batch_size=batch_size,
                         augment_kwargs=json.loads(json.dumps(augment_kwargs)))
            with dnnlib.util.atomic_write(os.path.join(run_dir, f'training-state-{kimg_name(cur_nimg, kimg_per_tick != int(kimg_per_tick))}.pt')) as f:
                torch.save(state, f)
            del state

        # Logs.
        if rank == 0:
            if stats_jsonl is None:
                stats_jsonl = open(os.path.join(run_dir, 'stats.jsonl'), 'at')
            stats_jsonl.write(json.dumps(dict(collector.as_dict(), timestamp=time.time())) + '\n')
            stats_jsonl.flush()
        dist.update_progress(cur_nimg // 1000, total_kimg)

        cur_tick += 1
        tick_start_nimg = cur_nimg
        tick_start_time = time.time()
        maintenance_time = tick_start_time - tick_end_time
        if done:
            break

    if stats_jsonl is not None:
        stats_jsonl.close()
    del dataset_iterator  # stops DataLoader workers
    dist.print0()
    dist.print0('Exiting...')

#----------------------------------------------------------------------------
