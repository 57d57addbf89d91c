"""Sample a guided-diffusion (ADM) checkpoint with classifier guidance: guided-diffusion's
`scripts/classifier_sample.py`, with ADM-ES's epsilon scaling and TS-DPM-ADM's time shift.

The flags are guided-diffusion's (the model and diffusion flags, `--classifier_path`,
`--classifier_scale` and create_classifier's `--classifier_*` architecture flags, with their
defaults) plus image_sample.py's: `--eps_scaler`/`--eps_scaler_k` (ADM-ES), `--do_time_shift
--window --cutoff` (TS-DPM-ADM, DDIM), `--seed`, `--out_dir`, `--resume`, `--solver`. Both
checkpoints are read with weights_only=True. Sample i uses seed `--seed` + i and draws, from
its own generator, x_T, then its class label (uniform over the classifier's 1000 classes, also
for an unconditional model, which does not see it), then one noise per step. The result is
`samples_NxHxWxC.npz` (arr_0 images, arr_1 labels) in `--out_dir`, written only when complete;
a killed run resumes. DDPM moves the posterior mean by Sigma g, DDIM the eps by
-sqrt(1 - abar) g, g = s * grad log p(y | x_t) (docs/adm.md, "Classifier guidance").
"""

import click

from samplers import adm_cli
from torch_utils import cli


def run(values):
    """The command line's work inside a torchrun process group (or a single process)."""
    return adm_cli.run_sampling(values, guided=True)


@click.command(context_settings=dict(max_content_width=120))
@adm_cli.adm_flag_options(guidance=True)
def main(**values):
    """Sample a guided-diffusion checkpoint with classifier guidance to samples_NxHxWxC.npz.

    Examples:

    \b
    # OpenAI's ImageNet 128x128, 250-step DDPM, scale 0.5 (as ADM-ES ran it)
    python classifier_sample.py --attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 \\
        --image_size 128 --learn_sigma True --noise_schedule linear --num_channels 256 --num_heads 4 \\
        --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True \\
        --classifier_scale 0.5 --classifier_path 128x128_classifier.pt --model_path 128x128_diffusion.pt \\
        --batch_size 100 --num_samples 50000 --timestep_respacing 250 --out_dir OUT

    \b
    # the same with ADM-ES's epsilon scaling at 100 steps, on 2 GPUs
    torchrun --standalone --nproc_per_node=2 classifier_sample.py --attention_resolutions 32,16,8 \\
        --class_cond True --diffusion_steps 1000 --image_size 128 --learn_sigma True --noise_schedule linear \\
        --num_channels 256 --num_heads 4 --num_res_blocks 2 --resblock_updown True --use_fp16 True \\
        --use_scale_shift_norm True --classifier_scale 0.5 --classifier_path 128x128_classifier.pt \\
        --model_path 128x128_diffusion.pt --batch_size 100 --num_samples 50000 --timestep_respacing 100 \\
        --eps_scaler 1.004 --out_dir OUT
    """
    adm_cli.run_command(run, values)


cli.bound_int_options(main)  # 2^70 and the like: one line (issue 26)

if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
