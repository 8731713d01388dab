"""The membership attacks by name (`--attacks loss,pia,secmi,sima,dcr,dcr_embed`).

White-box attacks query the model's noise predictor (`Generator.denoiser()`); black-box attacks need only its
samples. Each is a component with declared `Params` (validated before any work) built as `Attack(params,
runtime)`; see whitebox.py and blackbox.py for what each computes and where its defaults come from.
"""

from __future__ import annotations

from audit.registry import Registry

ATTACKS = Registry("attack")
ATTACKS.register("loss", "attacks.membership.whitebox:LossAttack",
                 "denoising error ‖ε − ε_θ(x_t, t)‖² at chosen timesteps (Matsumoto et al. 2023)")
ATTACKS.register("pia", "attacks.membership.whitebox:PIAAttack",
                 "proximal initialisation: ε_θ(x0, 0) as the noise, ℓ4 error at t (Kong et al., ICLR 2024)")
ATTACKS.register("secmi", "attacks.membership.whitebox:SecMIAttack",
                 "t-error after deterministic DDIM inversion to t_sec and one reverse step (Duan et al., ICML 2023)")
ATTACKS.register("sima", "attacks.membership.whitebox:SimAAttack",
                 "ℓ4 norm of the predicted noise on the clean input (SimA, Rao et al. 2025)")
ATTACKS.register("dcr", "attacks.membership.blackbox:DistanceAttack",
                 "NCC of each candidate to its closest synthetic image (pixels); DCR share")
ATTACKS.register("dcr_embed", "attacks.membership.blackbox:EmbeddingDistanceAttack",
                 "cosine of each candidate to its closest synthetic image in the re-id embedding; DCR share")

DEFAULT_ATTACKS = ("loss", "pia", "secmi", "sima", "dcr", "dcr_embed")
