"""Exposure-bias analysis: epsilon-norm trajectories (arXiv 2308.15321, Fig. 6), scaler
calibration, and sweeps of sample quality over epsilon scaling and time shift.

The command line around the `analysis` package (norms, calibration, sweeps, plots), which a
notebook can import instead. docs/exposure.md defines every quantity and holds an evaluation
on the bundled MNIST model.
"""

import os

import click

import dnnlib
from analysis.calibration import FITS, calibrate, describe_calibration, record_steps, write_calibration
from analysis.common import ExposureError, describe_sampler, load_network, open_dataset
from analysis.norms import format_norms, measure_norms, norms_record, read_norms, training_labels, training_pool, write_norms
from analysis.plots import _figure, plot_norms  # noqa: F401  (_figure: whether matplotlib is installed)
from analysis.schedule import format_schedule, search_schedule
from analysis.search import format_search, run_search
from analysis.sweep import format_sweep, grid_points, parse_scalers, parse_slopes, parse_ts, run_sweep
from metrics import classifier as digit_classifier
from metrics.detector import INCEPTION_URL, MetricError
from networks import adm
from samplers import SamplerOptionError, cli_options, jobs
from samplers import guidance as guidance_lib
from samplers.time_shift import TimeShiftError
from torch_utils import cli
from torch_utils import distributed as dist

ERRORS = (ExposureError, jobs.GenerateError, SamplerOptionError, TimeShiftError, MetricError, dist.DeviceError)
MAX_SEEDS = 1_000_000    # norms and sweeps keep per-seed arrays in memory (generate.py streams any number)


def _cli(fn, distributed=False, device=None):
    """Run fn() (inside the torchrun process group if `distributed`); known errors become one line."""
    try:
        if distributed:
            device = dist.init(device)
            try:
                return fn(device)
            finally:
                dist.shutdown()
        return fn()
    except (*ERRORS, OSError) as err:
        if os.environ.get('RANK', '0') != '0':
            raise SystemExit(1)  # rank 0 prints the one error line
        message = cli.os_error_message(err, action=None) if isinstance(err, OSError) else str(err)
        raise click.ClickException(message) from None


# The sampler options shared by `norms` and `sweep`: generate.py's, with its names and defaults
# (--eps_scaler, --eps_scaler_k and the time shift are swept or given per point, churn is not supported).
_sampler_options = cli_options.sampler_options('steps', 'solver', 'order', 'disc', 'schedule', 'scaling', 'sigma_min',
                                            'sigma_max', 'rho', 'respacing', 'eta', 'clip_denoised', 'variance')


def _common_options(fn):
    options = [
        click.option('--network', help='Network pickle or weights-only file  [default: the bundled MNIST model]', metavar='PATH|URL', type=str, default=None),
        click.option('--seeds', help='Random seeds (e.g. 0-999)', metavar='LIST', type=str, default='0-999', show_default=True),
        click.option('--class', 'class_idx', help='Class label  [default: random]', metavar='INT', type=click.IntRange(min=0), default=None),
        click.option('--batch', 'max_batch_size', help='Maximum batch size', metavar='INT', type=click.IntRange(min=1, max=cli.MAX_BATCH), default=64, show_default=True),
        click.option('--device', help='Torch device  [default: this rank\'s GPU, else cpu]', metavar='STR', type=cli.DEVICE, default=None),
        click.option('--allow-pickle-code', help='Run the code stored in the network or detector pickle (trusted files only)', is_flag=True, default=None),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.group(context_settings=dict(max_content_width=120))
def main():
    """Exposure-bias analysis (arXiv 2308.15321) for EDM's samplers and for DDPM/DDIM on ADM networks:
    epsilon-norm trajectories, epsilon-scaler calibration, and sweeps of sample quality over
    epsilon scaling and time shift.

    docs/exposure.md defines the quantities and holds an evaluation on the bundled MNIST model.

    Examples:

    \b
    # ||eps|| at every network evaluation, sampling vs training images (Fig. 6 of the paper)
    python exposure.py norms --data=datasets/mnist-32x32.zip --outdir=out/norms-euler10 \\
        --solver=euler --steps=10 --seeds=0-499

    \b
    # A scaler b from the measured ratio
    python exposure.py calibrate --norms=out/norms-euler10/norms.json

    \b
    # An offline feature detector for MNIST, and reference statistics with it
    python exposure.py classifier --data=datasets/mnist-32x32.zip --dest=models/mnist-classifier.pkl
    python fid.py ref --data=datasets/mnist-32x32.zip --dest=out/mnist-classifier-ref.npz \\
        --detector=models/mnist-classifier.pkl

    \b
    # Frechet distance in those features over a grid of b and time-shift settings (resumable)
    python exposure.py sweep --outdir=out/sweep-euler10 --solver=euler --steps=10 --seeds=0-999 \\
        --eps_scaler=1:1.012:0.002 --ts=off,10:1 \\
        --ref=out/mnist-classifier-ref.npz --detector=models/mnist-classifier.pkl --score-name=FD_MNIST

    \b
    # The best b of a finer grid by golden-section search, scoring a few of its points
    python exposure.py sweep --outdir=out/search-heun5 --solver=heun --steps=5 --seeds=0-999 \\
        --eps_scaler=0.996:1.04:0.002 --search \\
        --ref=out/mnist-classifier-ref.npz --detector=models/mnist-classifier.pkl --score-name=FD_MNIST

    \b
    # DDIM with 20 respaced steps on a converted ADM network (convert.py); then b and k
    python exposure.py norms --network=adm-cifar10.pkl --data=datasets/cifar10-32x32.zip \\
        --outdir=out/norms-ddim20 --solver=ddim --timestep_respacing=20 --seeds=0-499
    python exposure.py calibrate --norms=out/norms-ddim20/norms.json --linear

    \b
    # DDIM over b, without and with both time shifts (TS-DPM-ADM's: window 80, cutoff timestep 300)
    python exposure.py sweep --network=adm-cifar10.pkl --outdir=out/sweep-ddim5 --solver=ddim \\
        --timestep_respacing=5 --eps_scaler=1:1.02:0.005 --ts=off,5:0.5,tsdpm:80:300 --ref=out/cifar10-ref.npz

    \b
    # Levels and solver for 5 evaluations (GITS-style search), then sampling with them
    python exposure.py schedule --nfe=5 --out=out/schedule5.json
    python generate.py --outdir=out/s5 --seeds=0-999 --nfe=5 --schedule=out/schedule5.json
    """


@main.command()
@_common_options
@click.option('--data', 'data_path', help='Training dataset (ZIP or folder from dataset_tool.py)', metavar='ZIP|DIR', type=str, required=True)
@click.option('--outdir', help='Where to write norms.json, norms.csv and norms.png', metavar='DIR', type=str, required=True)
@_sampler_options
@click.option('--eps_scaler', help='Epsilon scaling b while sampling', metavar='FLOAT', type=cli.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@cli_options.sampler_options('eps_scaler_k', 'ts_window', 'ts_cutoff', 'ts_mode')
def norms(network, seeds, class_idx, max_batch_size, device, allow_pickle_code, data_path, outdir, **sampler_kwargs):
    """Mean ||eps||_2 at every network evaluation: sampling vs training images."""
    def work(device):
        options = cli_options.options_from_cli(sampler_kwargs)
        options.check()
        seed_list = list(jobs.parse_seeds(seeds, max_count=MAX_SEEDS))
        dataset = open_dataset(data_path)
        label, net = load_network(network, device, allow_pickle_code)
        jobs.check_class(net, class_idx)
        training_pool(training_labels(net, dataset), len(dataset), class_idx)  # fails here rather than after the message
        dist.print0(f'Measuring ||eps|| for {len(seed_list)} seeds, {describe_sampler(options)}, '
                    f'and for as many images of "{data_path}"')
        result = measure_norms(net, dataset, seed_list, options, class_idx=class_idx, max_batch_size=max_batch_size,
                               device=device, progress=True)
        if dist.get_rank() == 0:
            record = norms_record(result, network=label, data=data_path, seeds=seeds, options=options, class_idx=class_idx)
            paths = write_norms(outdir, record)
            png = plot_norms([record], os.path.join(outdir, 'norms.png'))
            print(format_norms(record))
            print(f'Wrote {", ".join(paths)}' + (f', {png}' if png else ' (matplotlib is not installed: no plot)'))
    _cli(work, distributed=True, device=device)


@main.command(name='calibrate')
@click.option('--norms', 'norms_path', help='norms.json written by "exposure.py norms"', metavar='JSON', type=str, required=True)
@click.option('--linear', help='Also fit a slope k: lambda_i = b + k (N-1-i) (ADM-ES form)', is_flag=True)
@click.option('--fit', help='norm: least squares on the norms; ratio: on the ratios, each evaluation equal', metavar='norm|ratio', type=click.Choice(list(FITS)), default='norm', show_default=True)
@click.option('--min-sigma', 'min_sigma', help='Fit only the evaluations at sigma >= this', metavar='FLOAT', type=cli.FloatRange(min=0), default=0, show_default=True)
@click.option('--json', 'json_path', help='Also write the suggestion and its derivation to this file', metavar='PATH', type=str, default=None)
def calibrate_cmd(norms_path, linear, fit, min_sigma, json_path):
    """Suggest --eps_scaler (and --eps_scaler_k) from measured norms."""
    def work():
        record = read_norms(norms_path)
        steps = record_steps(record)
        cal = calibrate(record['evaluations'], steps, linear=linear, fit=fit, min_sigma=min_sigma)
        other = calibrate(record['evaluations'], steps, linear=linear, fit=[f for f in FITS if f != fit][0], min_sigma=min_sigma)
        lines = describe_calibration(record, cal, other)
        print('\n'.join(lines))
        if json_path is not None:
            write_calibration(json_path, norms_path, cal, other, min_sigma, lines)
    _cli(work)


@main.command()
@_common_options
@click.option('--outdir', help='Sweep folder (images, features, results; re-run to resume)', metavar='DIR', type=str, required=True)
@click.option('--ref', 'ref_path', help='Reference statistics (fid.py ref, with the same --detector)', metavar='NPZ|URL', type=str, required=True)
@click.option('--detector', 'detector_url', help='Pickled feature detector', metavar='PKL|URL', type=str, default=INCEPTION_URL, show_default='NVIDIA Inception-v3')
@click.option('--score-name', help='Name of the score in tables and plots  [default: FID with Inception, else FD]', metavar='STR', type=str, default=None)
@_sampler_options
@click.option('--eps_scaler', 'scalers', help='Values of b: list and/or start:stop:step ranges', metavar='LIST', type=str, default='1', show_default=True)
@click.option('--eps_scaler_k', 'slopes', help='Values of k (ADM-ES linear form), as --eps_scaler', metavar='LIST', type=str, default='0', show_default=True)
@click.option('--ts', 'ts_text', help='Time-shift settings: off, WINDOW:CUTOFF (--ts_mode=clean), tsdpm:WINDOW:CUTOFF (TS-DPM-ADM\'s, ddim)', metavar='LIST', type=str, default='off', show_default=True)
@click.option('--bootstrap', 'replicates', help='Bootstrap replicates for the score\'s noise (0 = none)', metavar='INT', type=click.IntRange(min=0), default=200, show_default=True)
@click.option('--keep-images', help='Keep the PNGs of finished points (default: delete them once scored)', is_flag=True)
@click.option('--workers', 'num_workers', help='Image-loading processes per rank for the feature pass', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--search', help='Find the best b among the --eps_scaler values by golden-section search instead of scoring them all', is_flag=True)
@guidance_lib.guidance_click_options
@click.option('--search-images', 'start_images', help='Images per point when --search starts (doubled while two points are within the noise)  [default: 1/8 of the seeds]', metavar='INT', type=click.IntRange(min=2), default=None)
def sweep(network, seeds, class_idx, max_batch_size, device, allow_pickle_code, outdir, ref_path, detector_url, score_name,
          scalers, slopes, ts_text, replicates, keep_images, num_workers, search, start_images, classifier,
          classifier_scale, classifier_flags, **sampler_kwargs):
    """Sample quality over a grid of --eps_scaler and --eps_scaler_k values and time-shift settings.

    With --search, the grid is searched for its best b (one --ts setting, one k), scoring a few of its
    points on a growing number of images; search.json records the steps, the b found and the
    images spent. Points already scored in the folder are reused.
    """
    def work(device):
        base = cli_options.options_from_cli(sampler_kwargs)
        base.check()
        points = grid_points(parse_scalers(scalers), parse_ts(ts_text), parse_slopes(slopes))
        seed_list = list(jobs.parse_seeds(seeds, max_count=MAX_SEEDS))
        name = score_name or ('FID' if detector_url == INCEPTION_URL else 'FD')
        if search and (len(parse_ts(ts_text)) != 1 or len(parse_slopes(slopes)) != 1 or keep_images):
            raise ExposureError('--search takes one --ts setting, one --eps_scaler_k and no --keep-images')
        label, net = load_network(network, device, allow_pickle_code)
        try:
            guidance = guidance_lib.guidance_from_options(classifier, classifier_scale, classifier_flags,
                                                          net.img_resolution, device)
        except adm.ADMError as err:
            raise ExposureError(str(err)) from None
        if search:
            doc = run_search(net, label, seed_list, outdir, parse_scalers(scalers), ref_path, ts=parse_ts(ts_text)[0],
                             eps_scaler_k=parse_slopes(slopes)[0], base=base,
                             detector_url=detector_url, class_idx=class_idx, max_batch_size=max_batch_size, device=device,
                             replicates=replicates, num_workers=num_workers, start_images=start_images, score_name=name,
                             log=dist.print0, allow_pickle_code=allow_pickle_code, guidance=guidance)
            dist.print0(format_search(doc))
            dist.print0(f'Wrote {os.path.join(outdir, "search.json")}')
            return
        rows = run_sweep(net, label, seed_list, outdir, points, ref_path, base=base, detector_url=detector_url,
                         class_idx=class_idx, max_batch_size=max_batch_size, device=device, replicates=replicates,
                         num_workers=num_workers, keep_images=keep_images, score_name=name, log=dist.print0,
                         allow_pickle_code=allow_pickle_code, guidance=guidance)
        dist.print0(format_sweep(rows, name))
        dist.print0(f'Wrote {os.path.join(outdir, "sweep.csv")}, sweep.json and sweep.png')
    _cli(work, distributed=True, device=device)


@main.command()
@_common_options
@click.option('--nfe', help='Network evaluations per image', metavar='INT', type=click.IntRange(min=2), required=True)
@click.option('--out', help='Schedule file to write (JSON; also OUT.png, and OUT.work/ to resume)', metavar='JSON', type=str, required=True)
@click.option('--grid', 'grid_size', help='Candidate levels (Karras, rho 7, 80 to --sigma_min)', metavar='INT', type=click.IntRange(min=2, max=1000), default=64, show_default=True)
@click.option('--substeps', help='Reference Heun steps between candidate levels', metavar='INT', type=click.IntRange(min=1, max=100), default=3, show_default=True)
@click.option('--sigma_min', 'grid_min', help='Lowest candidate level: the reference images are D(x_ref; sigma_min)', metavar='FLOAT', type=cli.FloatRange(min=0, min_open=True), default=0.002, show_default=True)
@click.option('--refine/--no-refine', help='Fit each candidate solver\'s levels to its own error', default=True, show_default=True)
@click.option('--sweeps', help='Coordinate-descent sweeps of the refinement', metavar='INT', type=click.IntRange(min=1, max=20), default=4, show_default=True)
def schedule(network, seeds, class_idx, max_batch_size, device, allow_pickle_code, nfe, out, grid_size, substeps, grid_min, refine, sweeps):
    """Search the levels and solver for --nfe evaluations against reference trajectories (analysis/schedule.py)."""
    def work():
        label, net = load_network(network, device or 'cpu', allow_pickle_code)
        seed_list = list(jobs.parse_seeds(seeds, max_count=MAX_SEEDS))
        doc = search_schedule(net, nfe, seed_list, out, grid_size=grid_size, substeps=substeps, max_batch_size=max_batch_size,
                              device=device or 'cpu', network=label, refine=refine, sweeps=sweeps,
                              sigma_min=grid_min)
        print(format_schedule(doc))
        print(f'Wrote {out}' + (f', {doc["plot"]}' if doc['plot'] else ' (matplotlib is not installed: no plot)'))
    _cli(work)


@main.command()
@click.argument('norms_paths', nargs=-1, required=True, metavar='NORMS_JSON...')
@click.option('--dest', help='PNG to write', metavar='PNG', type=str, required=True)
@click.option('--title', help='Plot title  [default: solver, steps, images]', metavar='STR', type=str, default=None)
def plot(norms_paths, dest, title):
    """Plot norms.json files of one sampler together (e.g. without and with ES)."""
    def work():
        records = [read_norms(path) for path in norms_paths]
        if plot_norms(records, dest, title=title) is None:
            raise ExposureError('plot needs matplotlib (pip install matplotlib)')
        print(f'Wrote {dest}')
    _cli(work)


@main.command()
@click.option('--data', 'data_path', help='Labelled dataset (ZIP or folder from dataset_tool.py)', metavar='ZIP|DIR', type=str, required=True)
@click.option('--dest', help='Detector pickle to write', metavar='PKL', type=str, required=True)
@click.option('--holdout', help='Images held out to measure the accuracy', metavar='INT', type=click.IntRange(min=0), default=2000, show_default=True)
@click.option('--epochs', help='Passes over the training images', metavar='INT', type=click.IntRange(min=1), default=15, show_default=True)
@click.option('--batch', help='Batch size', metavar='INT', type=click.IntRange(min=1), default=128, show_default=True)
@click.option('--seed', help='Random seed (split, initialisation, batches)', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True)
def classifier(data_path, dest, holdout, epochs, batch, seed):
    """Train a small digit classifier to use as fid.py --detector."""
    def work():
        if not os.path.exists(data_path):
            raise ExposureError(f'--data {data_path}: no such file or folder')
        images, labels = digit_classifier.load_labelled_images(data_path)
        print(f'Training on {len(images) - holdout} of {len(images)} images of "{data_path}", {epochs} epochs')
        out = digit_classifier.train_classifier(images, labels, holdout=holdout, epochs=epochs, batch=batch, seed=seed,
                                                verbose=True)
        try:
            digit_classifier.save_detector(out.net, dest)
        except OSError as err:
            raise ExposureError(f'cannot write {dest}: {err.strerror or err}') from None
        acc = f'{100 * out.accuracy:.2f}% on the {out.num_holdout} held-out images' if holdout else 'not measured (--holdout=0)'
        print(f'Accuracy {acc}. Wrote "{dest}" ({os.path.getsize(dest) / 1024:.0f} KiB)')
    _cli(work)


cli.bound_int_options(main)  # 2^70 and the like: one line (issue 26)

if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
