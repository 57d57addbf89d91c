"""Sample a guided-diffusion (ADM) checkpoint with guided-diffusion's command line.

The commands of guided-diffusion's `scripts/image_sample.py` and of its forks (ADM-ES's
`--eps_scaler`, TS-DPM-ADM's `image_sample_1gpu.py` with `--do_time_shift --window --cutoff`)
run as they are: the model and diffusion flags, their defaults and value syntax (booleans as
True/False) are guided-diffusion's. The `.pt` checkpoint is read with weights_only=True.
Sample i uses seed `--seed` + i (generate.py's image of that seed); the result is
guided-diffusion's `samples_NxHxWxC.npz` in `--out_dir`, written only when complete; a killed
run resumes where it stopped. docs/adm.md has the published commands. The classifier flags
(--classifier_scale, --classifier_path, ...) are refused with a line pointing to
classifier_sample.py, which guides; training flags (--lr, --data_dir, ...) are accepted and ignored.
"""

import click

from networks import classifier as noisy_classifier
from samplers import adm_cli
from samplers.jobs import JobError
from torch_utils import cli

# classifier_sample.py's flags: guided-diffusion's image_sample.py has none of them, and taking
# them here without guiding would write unguided samples under a guided command.
GUIDANCE_ONLY = ('classifier_path', 'classifier_scale', *noisy_classifier.CLASSIFIER_FLAGS, 'guidance_mode')


def refuse_guidance_flags(values):
    """JobError (one line) for a classifier flag given to image_sample.py."""
    given = [name for name in GUIDANCE_ONLY if values.get(name) is not None]
    if given:
        raise JobError(f'--{given[0]} {values[given[0]]}: image_sample.py does not guide (it would write unguided samples); '
                       'use classifier_sample.py, which takes these flags plus --classifier_path and --classifier_scale')


def run(values, name=None):
    """The command line's work inside a torchrun process group (or a single process).

    name: the samples file's name in --out_dir  [default: guided-diffusion's samples_NxHxWxC.npz].
    """
    refuse_guidance_flags(values)
    return adm_cli.run_sampling(values, name=name)


def cli_main(values, name=None):
    """run() with every expected failure as one error line."""
    adm_cli.run_command(lambda v: run(v, name), values)


tsdpm_1gpu_name = adm_cli.tsdpm_1gpu_name


@click.command(context_settings=dict(max_content_width=120))
@adm_cli.adm_flag_options(refused=GUIDANCE_ONLY)
def main(**values):
    """Sample a guided-diffusion checkpoint to samples_NxHxWxC.npz, with guided-diffusion's flags.

    Examples:

    \b
    # TS-DPM-ADM's CIFAR-10 command (DDIM 5 steps with its time shift)
    python image_sample.py --image_size 32 --timestep_respacing ddim5 --model_path ADM.pt \\
        --num_channels 128 --num_head_channels 32 --num_res_blocks 3 --attention_resolutions 16,8 \\
        --resblock_updown True --use_new_attention_order True --learn_sigma True --dropout 0.3 \\
        --diffusion_steps 1000 --noise_schedule cosine --use_scale_shift_norm True --batch_size 512 \\
        --num_samples 50000 --use_ddim True --do_time_shift True --cutoff 300 --window 80 --out_dir OUT

    \b
    # ADM-ES: 100-step DDPM with epsilon scaling 1.017, on 2 GPUs
    torchrun --standalone --nproc_per_node=2 image_sample.py --image_size 32 --timestep_respacing 100 \\
        --eps_scaler 1.017 --model_path ADM.pt --num_channels 128 --num_head_channels 32 --num_res_blocks 3 \\
        --attention_resolutions 16,8 --resblock_updown True --use_new_attention_order True --learn_sigma True \\
        --dropout 0.3 --diffusion_steps 1000 --noise_schedule cosine --use_scale_shift_norm True \\
        --batch_size 512 --num_samples 50000 --out_dir OUT
    """
    cli_main(values)


cli.bound_int_options(main)  # 2^70 and the like: one line (issue 26)

if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
