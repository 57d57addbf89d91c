"""The network families of the toolkit, one module each.

- edm: EDM's U-Nets (SongUNet: DDPM++/NCSN++, DhariwalUNet: ADM) and preconditionings
  (VP, VE, iDDPM, EDM, and ADMPrecond for guided-diffusion's discrete-time models). Pickles
  store this module's source, so it imports nothing of the toolkit but torch_utils.persistence.
- adm: guided-diffusion's model and diffusion flags, and the tensor-by-tensor mapping of its
  checkpoints onto edm.DhariwalUNet.
- ddim, iddpm, score_sde: the backbones of TS-DPM's DDPM configs (ermongroup/ddim's Model,
  improved-diffusion's UNetModel, score-SDE's DDPM and NCSN++), in their original tensor layouts.
- tsdpm: those backbones built from TS-DPM's config files, their checkpoints, the beta schedules,
  and TSDPMPrecond, which makes them discrete-time denoisers for every sampler.

Reading files that may be hostile (pickles, .pt checkpoints, .npz) is in safeload/; this
package only builds networks and maps weights that have already been read.
"""
