"""EDM's module path for its networks, kept for EDM's pickles, EDM's training options and users' scripts.

The networks themselves live in networks/edm.py. EDM's `training_options.json` and this
toolkit's train.py name classes as 'training.networks.EDMPrecond' and so on, and scripts
written for EDM import from here; every public name of networks.edm is the same object here.
"""

from networks.edm import *  # noqa: F401,F403
