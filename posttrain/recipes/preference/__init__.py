"""Preference alignment: `dpo.py` (DPO, cDPO, IPO, SimPO, ORPO, KTO) and `reward_model.py`
(Bradley–Terry), offline on pairs; RLHF with PPO then runs in `recipes/rl/ppo.py`."""
