"""Image policies for closed-loop control: behaviour cloning on world-model features (HARP Sec. 5.3) and CNN
baselines. Imports only `foresight`.

    from agents.policies import make_bc_policy, load_policy
    policy = make_bc_policy("harp", backbone_model=foresight.load(".../harp/checkpoints/last"))
    Trainer(policy, clips, config=TrainConfig(steps=20000, batch_size=20), run_dir=...).fit()
    policy = load_policy(".../checkpoints/last"); policy.reset(); action = policy.select_action(obs)
"""

from agents.policies.backbones import (BACKBONES, CNNLSTM, CNNLSTMConfig, CNNTransformer, CNNTransformerConfig,
                                       ResNetEncoder, backbone_spec, build_backbone, make_backbone, reinit_stage)
from agents.policies.base import Policy, get_policy_class, load_policy, observation_frames, register_policy
from agents.policies.bc import METHODS, BCConfig, BCPolicy, make_bc_policy

__all__ = ["Policy", "load_policy", "register_policy", "get_policy_class", "observation_frames",
           "BCConfig", "BCPolicy", "make_bc_policy", "METHODS",
           "CNNLSTM", "CNNLSTMConfig", "CNNTransformer", "CNNTransformerConfig", "ResNetEncoder", "BACKBONES",
           "make_backbone", "backbone_spec", "build_backbone", "reinit_stage"]
