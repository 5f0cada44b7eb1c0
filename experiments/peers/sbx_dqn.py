"""SBX's DQN on Breakout with the settings experiments/bench_peers.py matches (run in SBX's venv).

    .venv-peers/sbx/bin/python experiments/peers/sbx_dqn.py --states 30000 --warmup 5000 ...

SB3's Atari set-up (make_atari_env: no-op starts, 4-frame max-skip, life loss as episode
end, FIRE on reset, 84x84 grayscale, reward clipping) with VecFrameStack(4) and SBX's
CnnPolicy (the Nature CNN; net_arch=[512] for its 512-unit dense layer, 256 otherwise).
Prints "progress states=N" every --every states (a callback, the only thing added to
SBX's loop) for the harness to time.
"""

from __future__ import annotations

import argparse


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--states", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--memory", type=int, required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--train-every", type=int, default=4)
    p.add_argument("--target-every", type=int, required=True, help="states between target copies")
    p.add_argument("--eps-start", type=float, default=1.0)
    p.add_argument("--eps-end", type=float, default=0.1)
    p.add_argument("--eps-span", type=int, required=True, help="states over which epsilon falls")
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import ale_py
    import gymnasium as gym
    import optax
    import sbx
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)

    class Progress(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % args.every == 0:
                print(f"progress states={self.num_timesteps}", flush=True)
            return True

    env = VecFrameStack(make_atari_env("BreakoutNoFrameskip-v4", n_envs=1, seed=args.seed), n_stack=4)
    model = sbx.DQN(
        "CnnPolicy", env, learning_rate=2.5e-4, buffer_size=args.memory, learning_starts=args.warmup,
        batch_size=args.batch, tau=1.0, gamma=0.99, train_freq=args.train_every, gradient_steps=1,
        target_update_interval=args.target_every, exploration_initial_eps=args.eps_start,
        exploration_final_eps=args.eps_end, exploration_fraction=args.eps_span / args.states,
        policy_kwargs={"net_arch": [512], "optimizer_class": optax.rmsprop,
                       "optimizer_kwargs": {"decay": 0.95, "eps": 1e-5, "centered": True}},
        seed=args.seed, verbose=0)
    print(f"obs {env.observation_space.shape} {env.observation_space.dtype}; sbx {sbx.__version__}", flush=True)
    model.learn(total_timesteps=args.states, callback=Progress())
    print(f"done states={model.num_timesteps}", flush=True)


if __name__ == "__main__":
    main()
