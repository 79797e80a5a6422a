"""The other columns of the paper's Table 5.1, run on the same data, environments, budgets and evaluation as ODT.

    dt   the original Decision Transformer: odt.loops.pretrain with ModelConfig(stochastic=False), AdamW
    iql  Implicit Q-Learning, offline then online (odt.baselines.iql)
    sac  Soft Actor-Critic from scratch at the online budget (odt.baselines.sac, stable-baselines3)
"""
