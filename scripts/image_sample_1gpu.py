"""TS-DPM-ADM's `python scripts/image_sample_1gpu.py ...`, run as it is (image_sample.py's library).

Takes the same flags as image_sample.py and, like TS-DPM-ADM's script, writes
OUT_DIR/{model_type}_{data_type}_{timestep_respacing}step.npz, with
_{window}win_{cutoff}cut before .npz when --do_time_shift True (defaults: --model_type adm,
--data_type cifar). --gpu_id is accepted and ignored: choose the GPU with --device or
CUDA_VISIBLE_DEVICES. docs/adm.md has the details.
"""

import os
import sys

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import image_sample  # noqa: E402  (needs the repository root on sys.path)
from torch_utils import cli  # noqa: E402


@click.command(context_settings=dict(max_content_width=120))
@image_sample.adm_cli.adm_flag_options(refused=image_sample.GUIDANCE_ONLY)
def main(**values):
    """Sample a guided-diffusion checkpoint as TS-DPM-ADM's image_sample_1gpu.py does.

    The samples go to OUT_DIR/MODEL_TYPE_DATA_TYPE_RESPACINGstep[_WINDOWwin_CUTOFFcut].npz.

    \b
    # TS-DPM-ADM's CIFAR-10 command: writes OUT/adm_cifar10_ddim5step_80win_300cut.npz
    python scripts/image_sample_1gpu.py --image_size 32 --timestep_respacing ddim5 --model_path ADM.pt \\
        --num_channels 128 --num_head_channels 32 --num_res_blocks 3 --attention_resolutions 16,8 \\
        --resblock_updown True --use_new_attention_order True --learn_sigma True --dropout 0.3 \\
        --diffusion_steps 1000 --noise_schedule cosine --use_scale_shift_norm True --batch_size 512 \\
        --num_samples 50000 --use_ddim True --do_time_shift True --cutoff 300 --window 80 --out_dir OUT \\
        --data_type cifar10 --model_type adm
    """
    image_sample.cli_main(values, image_sample.tsdpm_1gpu_name(values))


cli.bound_int_options(main)  # 2^70 and the like: one line (issue 26)

if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
