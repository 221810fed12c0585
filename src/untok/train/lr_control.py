"""A tabular Q-learning agent that steers the learning rate (``train.lr_controller =
"qlearn"``; see docs/options.md).

After warmup it replaces the schedule. The trainer calls :meth:`QLearnController.observe`
after every optimizer step with the loss and the gradient norm; every ``every`` steps the
agent makes a decision:

- state: (loss trend bucket, gradient-norm bucket). The trend is the relative change of
  the mean loss over the last ``every`` steps against the ``every`` before; the gradient
  norm is the window's mean against a slow running mean of it.
- reward of the previous action: the relative loss improvement it was followed by.
- Q update: ``Q[s, a] += alpha (r + gamma max Q[s'] - Q[s, a])``.
- action: epsilon-greedy over factors for the learning rate (kept in ``[lr_min, lr_max]``)
  and, with ``momentum``, a step of beta1 down, none or up (kept in [0.8, 0.99]);
  epsilon decays per decision.

Everything it holds, including its random generator, is in :meth:`state_dict`, which the
trainer saves in every checkpoint, so a resumed run makes the same decisions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from untok.config import TrainConfig

TREND_EDGES = (-0.01, -0.001, 0.001)  # relative loss change: falling fast .. rising
NORM_EDGES = (0.8, 1.25)  # window grad norm / running grad norm: calm, normal, spiking
BETA1_STEPS = (-0.02, 0.0, 0.02)
BETA1_RANGE = (0.8, 0.99)


class QLearnController:
    def __init__(self, config: TrainConfig) -> None:
        q = config.qlearn
        self.config = q
        self.lr_min = q.lr_min if q.lr_min is not None else config.lr / 100
        self.lr_max = q.lr_max if q.lr_max is not None else config.lr * 10
        beta_steps = BETA1_STEPS if q.momentum else (0.0,)
        self.actions = [(f, b) for f in q.actions for b in beta_steps]
        self.num_states = (len(TREND_EDGES) + 1) * (len(NORM_EDGES) + 1)
        self.table = np.zeros((self.num_states, len(self.actions)))
        self.rng = np.random.Generator(np.random.PCG64(config.seed))
        self.lr = float(np.clip(config.lr, self.lr_min, self.lr_max))
        self.beta1 = float(np.clip(config.beta1, *BETA1_RANGE)) if q.momentum else config.beta1
        self.epsilon = q.epsilon
        self.window_loss: list[float] = []
        self.window_norm: list[float] = []
        self.previous_loss: float | None = None
        self.norm_mean: float | None = None
        self.state: int | None = None
        self.action: int | None = None
        self.decisions = 0

    def observe(self, loss: float, grad_norm: float) -> None:
        """Record one optimizer step; every ``every`` steps, learn and act."""
        if not (np.isfinite(loss) and np.isfinite(grad_norm)):
            return
        self.window_loss.append(loss)
        self.window_norm.append(grad_norm)
        if len(self.window_loss) >= self.config.every:
            self._decide()

    def _bucket(self, loss: float, norm: float) -> int:
        trend = 0.0 if self.previous_loss is None else \
            (loss - self.previous_loss) / max(abs(self.previous_loss), 1e-12)
        ratio = 1.0 if not self.norm_mean else norm / self.norm_mean
        return int(np.searchsorted(TREND_EDGES, trend)) * (len(NORM_EDGES) + 1) + \
            int(np.searchsorted(NORM_EDGES, ratio))

    def _decide(self) -> None:
        loss = float(np.mean(self.window_loss))
        norm = float(np.mean(self.window_norm))
        self.window_loss.clear()
        self.window_norm.clear()
        state = self._bucket(loss, norm)
        q = self.config
        if self.state is not None and self.action is not None and self.previous_loss:
            reward = (self.previous_loss - loss) / abs(self.previous_loss)
            target = reward + q.gamma * self.table[state].max()
            self.table[self.state, self.action] += q.alpha * (
                target - self.table[self.state, self.action])
        if self.rng.random() < self.epsilon:
            action = int(self.rng.integers(len(self.actions)))
        else:  # ties go to the action nearest "no change" (listed first among equals)
            best = np.flatnonzero(self.table[state] == self.table[state].max())
            action = int(min(best, key=lambda a: abs(np.log(self.actions[a][0]))))
        factor, beta_step = self.actions[action]
        self.lr = float(np.clip(self.lr * factor, self.lr_min, self.lr_max))
        if beta_step:
            self.beta1 = float(np.clip(self.beta1 + beta_step, *BETA1_RANGE))
        self.epsilon = max(q.epsilon_min, self.epsilon * q.epsilon_decay)
        self.norm_mean = norm if self.norm_mean is None else 0.9 * self.norm_mean + 0.1 * norm
        self.previous_loss, self.state, self.action = loss, state, action
        self.decisions += 1

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (JSON-friendly)."""
        return {"table": self.table.tolist(), "lr": self.lr, "beta1": self.beta1,
                "epsilon": self.epsilon, "window_loss": list(self.window_loss),
                "window_norm": list(self.window_norm), "previous_loss": self.previous_loss,
                "norm_mean": self.norm_mean, "state": self.state, "action": self.action,
                "decisions": self.decisions, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        table = np.asarray(state["table"], dtype=np.float64)
        if table.shape != self.table.shape:
            raise ValueError(f"Q-table of shape {table.shape}, expected {self.table.shape} "
                             "(train.qlearn.actions or momentum changed)")
        self.table = table
        for name in ("lr", "beta1", "epsilon", "previous_loss", "norm_mean", "state",
                     "action", "decisions"):
            setattr(self, name, state[name])
        self.window_loss, self.window_norm = list(state["window_loss"]), \
            list(state["window_norm"])
        self.rng.bit_generator.state = state["rng"]
