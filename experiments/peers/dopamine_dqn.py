"""Dopamine's JAX DQN (JaxDQNAgent) on Breakout through its own Runner, with the settings
experiments/bench_peers.py matches, as gin bindings (run in Dopamine's venv).

    .venv-peers/dopamine/bin/python experiments/peers/dopamine_dqn.py --base-dir DIR --states 30000 ...

Dopamine's Atari set-up (ALE v5 with sticky actions, its own 4-frame max-pooled skip,
84x84 grayscale, 4-frame stack in the replay buffer) and Nature network; RMSProp centred
as dqn_jax's (Dopamine's JAX default is Adam) and the Huber loss. Epsilon: 1 over the
warm-up, then 0.1 (Dopamine decays only after its warm-up; a 1-step decay). One training
iteration of --states states and no evaluation; the Runner prints "Steps executed: N" after
each episode, which the harness times.
"""

from __future__ import annotations

import argparse


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base-dir", required=True)
    p.add_argument("--states", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--memory", type=int, required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--train-every", type=int, default=4)
    p.add_argument("--target-every", type=int, required=True, help="states between target copies")
    p.add_argument("--eps-end", type=float, default=0.1)
    p.add_argument("--eps-span", type=int, default=0, help="ignored: Dopamine decays after its warm-up")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import gin
    from dopamine.discrete_domains import run_experiment

    bindings = [
        "create_atari_environment.game_name = 'Breakout'",
        "create_atari_environment.sticky_actions = True",
        "create_agent.agent_name = 'jax_dqn'",
        "create_runner.schedule = 'continuous_train'",
        "Runner.num_iterations = 1",
        f"Runner.training_steps = {args.states}",
        "Runner.evaluation_steps = 0",
        "Runner.max_steps_per_episode = 27000",
        f"JaxDQNAgent.min_replay_history = {args.warmup}",
        f"JaxDQNAgent.update_period = {args.train_every}",
        f"JaxDQNAgent.target_update_period = {args.target_every}",
        f"JaxDQNAgent.epsilon_train = {args.eps_end}",
        "JaxDQNAgent.epsilon_decay_period = 1",
        "JaxDQNAgent.optimizer = 'rmsprop'",
        "JaxDQNAgent.loss_type = 'huber'",
        f"JaxDQNAgent.seed = {args.seed}",
        "create_optimizer.learning_rate = 2.5e-4",
        "create_optimizer.eps = 1e-5",
        "create_optimizer.beta2 = 0.95",  # its RMSProp decay
        "create_optimizer.centered = True",
        f"ReplayBuffer.max_capacity = {args.memory}",
        f"ReplayBuffer.batch_size = {args.batch}",
    ]
    gin.parse_config_files_and_bindings([], bindings)
    runner = run_experiment.create_runner(args.base_dir)
    print("dopamine runner ready", flush=True)
    runner.run_experiment()
    print("\ndone", flush=True)


if __name__ == "__main__":
    main()
