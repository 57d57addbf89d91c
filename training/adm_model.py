"""guided-diffusion's UNetModel interface over the toolkit's ADM network, for training.

`GuidedUNet` computes with the DhariwalUNet that networks/adm.py builds from guided-diffusion's
flags, but its parameters are guided-diffusion's: named, laid out and ordered as UNetModel's.
So `state_dict()` is a guided-diffusion checkpoint, `load_state_dict(strict=True)` takes one,
and an optimizer over `parameters()` has guided-diffusion's state layout. Each forward maps
the parameters into the inner network's layout (networks/adm.py `to_ours`, differentiable)
and runs it with torch.func.functional_call; the inner network keeps only its buffers.
"""

import re

import torch

from networks import adm

# Module names of guided-diffusion's UNetModel in construction order (siblings are ranked by it).
_MODULE_ORDER = ('time_embed', 'label_emb', 'input_blocks', 'middle_block', 'output_blocks', 'out',
                 'in_layers', 'emb_layers', 'out_layers', 'skip_connection', 'norm', 'qkv', 'proj_out', 'op', 'conv',
                 'weight', 'bias')


def _module_order(name):
    return [(0, int(part), '') if part.isdigit() else (1, _MODULE_ORDER.index(part), part) for part in name.split('.')]


def typed_flags(flags):
    """guided-diffusion's flag dict (values typed or as command-line strings) as networks/adm.py
    flags; keys that are not model or diffusion flags (input_pertub, lr, ...) are ignored."""
    known = {**adm.MODEL_FLAGS, **adm.DIFFUSION_FLAGS}
    values = {}
    for name, value in dict(flags).items():
        if name == 'num_classes':
            values[name] = None if value is None else int(value)
        elif name in known and value is not None:
            kind = adm.flag_type(known[name])
            try:
                values[name] = kind(value) if isinstance(value, str) or kind is not str else value
            except Exception:
                raise adm.ADMError(f'--{name}: cannot read "{value}" as {kind.__name__}') from None
    return values


class GuidedUNet(torch.nn.Module):
    """guided-diffusion's UNetModel: forward(x, timesteps, y=None) -> eps (or x0), and the
    variance values v in the second half of the channels with learn_sigma."""

    def __init__(self, flags, num_classes=None):
        super().__init__()
        values = typed_flags(flags)
        self.predict_xstart = bool(values.get('predict_xstart', False))
        self.flags = adm.make_flags(**{**values, 'predict_xstart': False})  # the network does not depend on it
        self.flags.predict_xstart = self.predict_xstart
        net = adm.build_network(self.flags, num_classes)
        self.num_classes = net.label_dim
        self.use_fp16 = bool(self.flags.use_fp16)
        new_order = self.flags.use_new_attention_order
        ours = net.state_dict()
        self._specs = {}
        for spec in sorted(adm.tensor_map(net), key=lambda s: _module_order(s.adm)):
            *path, leaf = spec.adm.split('.')
            module = self
            for part in path:
                if not hasattr(module, part):
                    module.add_module(part, torch.nn.Module())
                module = getattr(module, part)
            module.register_parameter(leaf, torch.nn.Parameter(adm.to_adm(spec, ours[spec.ours], new_order)))
            self._specs[spec.adm] = spec
        # The inner network keeps its buffers (resampling filters); its parameters become shapes only.
        for module in net.modules():
            for key, param in list(module._parameters.items()):
                if param is not None:
                    module._parameters[key] = torch.nn.Parameter(torch.empty_like(param, device='meta'), requires_grad=False)
        self._inner = [net.model.train(self.training), net]  # a list: not submodules, so not in state_dict()

    def train(self, mode=True):
        super().train(mode)
        self._inner[0].train(mode)
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for module in self._inner[0].modules():
            for key, buf in module._buffers.items():
                if buf is not None:
                    module._buffers[key] = fn(buf)
        return self

    def inner_parameters(self):
        """{inner network name: tensor} of the parameters, in the inner layout (differentiable)."""
        new_order = self.flags.use_new_attention_order
        params = {}
        for name, param in self.named_parameters():
            spec = self._specs[name]
            params[spec.ours[len('model.'):]] = adm.to_ours(spec, param, new_order)
        return params

    def forward(self, x, timesteps, y=None):
        labels = None
        if self.num_classes:
            if y is None:
                raise ValueError('a class-conditional model needs labels y')
            labels = torch.nn.functional.one_hot(y.long(), self.num_classes).to(torch.float32)
        half = self.use_fp16 and x.device.type == 'cuda'  # guided-diffusion's torso in float16 (GPU only)
        h = x.to(torch.float16 if half else torch.float32)
        t = torch.as_tensor(timesteps, device=x.device).to(torch.float32).reshape(-1).expand(x.shape[0])
        out = torch.func.functional_call(self._inner[0], self.inner_parameters(), (h, t),
                                         dict(class_labels=labels))
        return out.to(x.dtype)

    def check_state_dict(self, state, source='checkpoint'):
        """Raise ADMError (one line) unless `state` has exactly this model's names and shapes."""
        adm.check_state_dict(self._inner[1], state, source)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        if strict:
            self.check_state_dict(state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def denoiser(self):
        """The toolkit's ADMPrecond (eval mode, CPU) holding a copy of these weights, for sampling."""
        return adm.load_state_dict(adm.build_network(self.flags, self.num_classes or None),
                                   {k: v.detach().cpu() for k, v in self.state_dict().items()}, self.flags)


def create_model(flags, num_classes=None):
    """guided-diffusion's UNetModel for a dict of create_model_and_diffusion's flags (other keys
    ignored; 'num_classes' sets the class count, default guided-diffusion's 1000)."""
    return GuidedUNet(flags, num_classes)


def ema_name(rate):
    """The RATE of ema_RATE_NNNNNN.pt as guided-diffusion writes it (Python's str of the float)."""
    return str(float(rate))


CHECKPOINT_NAME = re.compile(r'model(\d+)\.pt$')
