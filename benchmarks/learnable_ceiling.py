"""How close to the oracle any model can get on the generated world: a model that knows the
world exactly except each user's hidden tastes, learned from that user's training rows.

The oracle scores a row by its planted logit, which holds per-user vectors no data reveals
exactly. This benchmark simulates the world of ``params.yaml``'s ``generate`` section in
memory (as ``planted_terms.py`` does) and fits, per user, the Bayes (MAP) estimate of the
user's unknowns under their true Gaussian priors, by Newton steps on the training rows'
purchase labels, with every other part of the logit given exactly (the items' vectors,
prices, positions, queries, the re-buy term, the intercept). Two ceilings:

- ``user_taste + bias``: the browsing taste ``user_vec`` is given too (as if the offers a
  user browsed revealed it exactly); only the taste browsing does not reveal
  (``user_taste``) and the user's bias are learned from labels;
- ``all user vectors``: ``user_vec`` is learned from labels as well;
- ``users and items``: the items' own vectors and quality are learned too (alternating
  fits of users given items and items given users): a model of exactly the planted form
  whose every id parameter comes from the training labels.

Both score the test window (the last ``--test-days`` days) with the fitted values; the
first is an upper bound for any model that learns the hidden taste from purchases.

    .venv/bin/python benchmarks/learnable_ceiling.py
"""

from __future__ import annotations

import argparse

import numpy as np

from contract.params import load_config
from dlrm.metrics import auc, paired_auc_difference
from generator.config import GenerateConfig
from generator.events import build_world, simulate_chunk, warm_history
from generator.world import DIM


def fit_users(user: np.ndarray, x: np.ndarray, offset: np.ndarray, y: np.ndarray, prior_var: np.ndarray,
              n_users: int, steps: int = 12) -> np.ndarray:
    """(U, P) MAP weights of per-user logistic regressions logit = offset + x @ w_user,
    w_user ~ N(0, diag(prior_var)), from rows (user (n,), x (n, P), offset (n,), y (n,)):
    Newton steps, each user's P x P system solved on its own rows."""
    order = np.argsort(user, kind="stable")
    user, x, offset, y = user[order], x[order], offset[order], y[order]
    bounds = np.searchsorted(user, np.arange(n_users + 1))
    w = np.zeros((n_users, x.shape[1]))
    prec = np.diag(1.0 / prior_var)
    for _ in range(steps):
        mu = 1.0 / (1.0 + np.exp(-(offset + np.einsum("np,np->n", x, w[user]))))
        resid, curv = y - mu, mu * (1 - mu)
        for u in range(n_users):
            a, b = bounds[u], bounds[u + 1]
            xu = x[a:b]
            grad = xu.T @ resid[a:b] - w[u] / prior_var
            hess = (xu * curv[a:b, None]).T @ xu + prec
            step = np.linalg.solve(hess, grad)
            w[u] += step / max(1.0, float(np.abs(step).max()))     # damped: no overshoot on few rows
    return w


def fit_users_and_items(cfg: GenerateConfig, world, user: np.ndarray, item: np.ndarray, leaf: np.ndarray,
                        base: np.ndarray, fit: np.ndarray, test: np.ndarray, y: np.ndarray,
                        rounds: int = 6) -> np.ndarray:
    """Test-window logits when users' vectors and bias and items' deviation vectors and
    quality are all learned from the training labels (alternating MAP fits; the leaf vectors
    of the categories are given). ``base``: the logit without any of those terms."""
    s = np.sqrt(DIM)
    n = y.size
    uvec, taste = np.zeros((cfg.users, DIM)), np.zeros((cfg.users, DIM))
    ubias = np.zeros(cfg.users)
    dev, quality = np.zeros((cfg.items, DIM)), np.zeros(cfg.items)
    one = np.ones((n, 1))
    bias_var, q_var = float(np.var(world.user_bias)), float(np.var(world.item_quality))
    for _ in range(rounds):
        # users given the items
        d = dev[item]
        x = np.hstack([(0.9 * leaf + cfg.item_taste * d) / s, cfg.user_taste * (leaf + d) / s, one])
        w = fit_users(user[fit], x[fit], (base + quality[item])[fit], y[fit],
                      np.r_[np.ones(2 * DIM), bias_var], cfg.users, steps=6)
        uvec, taste, ubias = w[:, :DIM], w[:, DIM:2 * DIM], w[:, -1]
        # items given the users
        x = np.hstack([(cfg.item_taste * uvec[user] + cfg.user_taste * taste[user]) / s, one])
        offset = base + (0.9 * np.einsum("nd,nd->n", uvec[user], leaf)
                         + cfg.user_taste * np.einsum("nd,nd->n", taste[user], leaf)) / s + ubias[user]
        w = fit_users(item[fit], x[fit], offset[fit], y[fit], np.r_[np.ones(DIM), q_var], cfg.items, steps=6)
        dev, quality = w[:, :DIM], w[:, -1]
    x = np.hstack([(cfg.item_taste * uvec[user] + cfg.user_taste * taste[user]) / s, one])
    return (offset + np.einsum("np,np->n", x, np.hstack([dev, quality[:, None]])[item]))[test]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--test-days", type=int, default=3)
    ap.add_argument("--valid-days", type=int, default=3, help="days before the test window left out of the fit")
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="generate.KEY=VALUE")
    args = ap.parse_args()
    cfg = load_config(GenerateConfig, "generate", args.params, args.overrides)
    world = build_world(cfg)
    history = warm_history(cfg, world)
    draws = [simulate_chunk(cfg, world, c, history) for c in range(-(-cfg.rows // cfg.chunk_rows))]
    cat = lambda f: np.concatenate([f(d) for d in draws])  # noqa: E731
    y, day = cat(lambda d: d.label).astype(np.float64), cat(lambda d: d.ev["day"])
    user, item = cat(lambda d: d.ev["user"]), cat(lambda d: d.ev["item"])
    terms = {k: cat(lambda d, k=k: d.terms[k]) for k in draws[0].terms}
    z = world.intercept + sum(terms.values())
    leaf = world.leaf_vec[world.item_leaf[item]]
    dev = world.item_vec[item]
    s = np.sqrt(DIM)
    x_vec = (0.9 * leaf + cfg.item_taste * dev) / s                 # multiplies user_vec
    x_taste = cfg.user_taste * (leaf + dev) / s                      # multiplies user_taste
    one = np.ones((y.size, 1))
    test = day >= cfg.days - args.test_days
    fit = day < cfg.days - args.test_days - args.valid_days
    known_vec = terms["category_taste"] + terms["item_taste"]
    hidden = known_vec + terms["user_taste"] + terms["user_bias"]
    bias_var = float(np.var(world.user_bias))
    ceilings = {
        "user_taste + bias": (np.hstack([x_taste, one]), z - terms["user_taste"] - terms["user_bias"],
                              np.r_[np.ones(DIM), bias_var]),
        "all user vectors": (np.hstack([x_vec, x_taste, one]), z - hidden, np.r_[np.ones(2 * DIM), bias_var]),
    }
    oracle = auc(y[test], z[test])
    ceilings["users and items"] = None
    print(f"{cfg.users:,} users, {cfg.items:,} items, {y.size:,} rows ({int(fit.sum()):,} fitted, "
          f"{int(y[fit].sum()):,} purchases; test {int(test.sum()):,} rows, {int(y[test].sum()):,} purchases)")
    print(f"oracle AUC on the test window: {oracle:.4f}")
    for name, spec in ceilings.items():
        if spec is None:
            score = fit_users_and_items(cfg, world, user, item, leaf, z - hidden - terms["item_quality"],
                                        fit, test, y)
        else:
            x, offset, var = spec
            w = fit_users(user[fit], x[fit], offset[fit], y[fit], var, cfg.users)
            score = offset[test] + np.einsum("np,np->n", x[test], w[user[test]])
        d = paired_auc_difference(y[test], score, z[test], n_boot=200)
        print(f"ceiling, {name} learned: AUC {auc(y[test], score):.4f}; minus the oracle "
              f"{d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]")


if __name__ == "__main__":
    main()
