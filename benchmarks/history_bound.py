"""How much of the gap to the oracle a user's history can close at best, on a generated world.

The planted logit of an offer is a sum of terms (``generator.events.TERMS``). Four of them
depend on who the user is through latent values no column holds: the taste ``user_vec``
(``category_taste`` and ``item_taste``; it also steers what the user browses), the taste
``user_taste`` that browsing does not reveal, and ``user_bias``. The only evidence for them
is the user's own history: what they were offered and whether they bought it.

This script simulates the world of ``params.yaml``'s ``generate`` section in memory (as
``benchmarks/planted_terms.py`` does) and scores the test window (the last ``--test-days``
days) with idealised learners that know *everything else* exactly (every item's vectors,
the user's price sensitivity, the context, position and query terms, the intercept) and
estimate the user's latent values per user by Bayesian logistic regression on the user's
labelled events before the test window, with the generator's own priors (N(0, 1) per taste
coordinate, N(0, 0.5^2) for the bias). Each test row is scored by the posterior predictive
(the probit approximation). No model reading the same history can do better on average
than the learner handed the same evidence and the true item side; these are ceilings. (A
model's history on a test day also holds the test window's earlier days: at most two of
the 42 days' events more.)

  * ``no user``: the user's latent values at their prior mean (what a model knowing the
    items perfectly but nothing of the user reaches);
  * ``last N``: only the user's last N events before the test window (the tower's view at
    ``features.history_len`` = N);
  * ``all``: every event of the user before the test window;
  * ``all, user_vec given``: as ``all`` with ``user_vec`` known exactly (as if browsing
    revealed it perfectly): only ``user_taste`` and the bias are estimated.

Every learner above knows the items' own vectors exactly; a model learns them. Three more
kinds of row replace them with estimates: ``items estimated`` (each item's vector from its
own events before the test window, with every user known exactly: the best a model
learning both sides could know of the items), ``item corr R`` (the true vectors blurred
to correlation R, ``--item-corr``) and ``items of DIR`` (the item rows of a trained model
bundle, ``--model``, mapped linearly onto the true vectors on held-out folds of items).
With ``--mf``, a learned reference rather than a ceiling: matrix factorisation of users and
items from their ids on top of the true offset (everything but the user-latent terms known).

It prints each ceiling's test AUC, its gap to the oracle and, against a model's AUC given
with ``--model-auc`` (e.g. the DLRM without the tower from ``history_bench.py --parts
quality``), the gap ratio the ceiling would reach. The default world:

    .venv/bin/python benchmarks/history_bound.py --model-auc 0.8540 --last 20,100
    .venv/bin/python benchmarks/history_bound.py --model-auc 0.8540 --last 100 --item-corr 0.9,0.7 --model models/model
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from contract.params import load_config
from dlrm.metrics import auc, bootstrap_auc
from generator.config import GenerateConfig
from generator.events import TERMS, build_world, simulate_chunk, warm_history
from generator.world import DIM

LATENT_TERMS = ("category_taste", "item_taste", "user_taste", "user_bias")
BIAS_PRIOR_SD = 0.5  # generator.world: user_bias ~ N(0, 0.5^2); both taste vectors ~ N(0, I)


def simulate(cfg: GenerateConfig) -> dict[str, np.ndarray]:
    """All rows of the world, in time order: user, item, day, label and the offset (the
    planted logit with the intercept, less the user-latent terms)."""
    world = build_world(cfg)
    history = warm_history(cfg, world)
    draws = [simulate_chunk(cfg, world, c, history) for c in range(-(-cfg.rows // cfg.chunk_rows))]
    cat = lambda f: np.concatenate([f(d) for d in draws])  # noqa: E731
    z = cat(lambda d: sum(d.terms[k] for k in TERMS))
    latent = cat(lambda d: sum(d.terms[k] for k in LATENT_TERMS))
    return {"world": world, "user": cat(lambda d: d.ev["user"]), "item": cat(lambda d: d.ev["item"]),
            "day": cat(lambda d: d.ev["day"]), "y": cat(lambda d: d.label).astype(np.float64),
            "z": world.intercept + z, "offset": world.intercept + z - latent}


def design(cfg: GenerateConfig, world, item: np.ndarray, item_vec: np.ndarray | None = None) -> np.ndarray:
    """(n, 2 * DIM + 1): the user-latent logit is this times [user_vec, user_taste, bias].

    ``item_vec`` (I, DIM): what the learner believes each item's own vector is (default the
    true ``world.item_vec``)."""
    leaf = world.leaf_vec[world.item_leaf[item]]
    dev = (world.item_vec if item_vec is None else item_vec)[item]
    s = np.sqrt(DIM)
    return np.hstack([(0.9 * leaf + cfg.item_taste * dev) / s, cfg.user_taste * (leaf + dev) / s,
                      np.ones((item.size, 1))])


def fit_user(x: np.ndarray, y: np.ndarray, off: np.ndarray, prec: np.ndarray,
             iters: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """MAP of a logistic regression with a Gaussian prior (precision ``prec``, mean 0) by
    Newton's method; returns the mode and the inverse Hessian there (the Laplace covariance)."""
    theta = np.zeros(x.shape[1])
    eye = np.diag(prec)

    def objective(t: np.ndarray) -> float:
        z = off + x @ t
        return float(np.logaddexp(0.0, z).sum() - y @ z + 0.5 * (prec * t * t).sum())

    f = objective(theta)
    for _ in range(iters):
        p = 0.5 * (1.0 + np.tanh(0.5 * (off + x @ theta)))
        g = x.T @ (p - y) + prec * theta
        h = (x * (p * (1 - p))[:, None]).T @ x + eye
        step = np.linalg.solve(h, g)
        t = 1.0
        while t > 1e-6:  # backtracking: Newton's full step can overshoot on separable users
            f_new = objective(theta - t * step)
            if f_new <= f:
                break
            t *= 0.5
        theta -= t * step
        done = f - f_new < 1e-10
        f = f_new
        if done:
            break
    p = 0.5 * (1.0 + np.tanh(0.5 * (off + x @ theta)))
    h = (x * (p * (1 - p))[:, None]).T @ x + eye
    return theta, np.linalg.inv(h)


def groups(key: np.ndarray, idx: np.ndarray, n: int) -> list[np.ndarray]:
    """``idx`` split by ``key[idx]`` in ``[0, n)``: group g holds the indices whose key is g,
    in their order in ``idx`` (time order for rows)."""
    order = idx[np.argsort(key[idx], kind="stable")]
    return np.split(order, np.searchsorted(key[order], np.arange(1, n)))


def ceiling(sim: dict, x: np.ndarray, test: np.ndarray, last: int | None, known_vec: bool) -> np.ndarray:
    """Posterior-predictive logits of the test rows, per user from the evidence before them."""
    world, user = sim["world"], sim["user"]
    d = DIM
    prec = np.r_[np.ones(2 * d), np.full(1, 1.0 / BIAS_PRIOR_SD ** 2)]
    cols = slice(d, 2 * d + 1) if known_vec else slice(0, 2 * d + 1)
    off = sim["offset"]
    if known_vec:  # the user_vec part of the logit is known: move it into the offset
        off = sim["offset"] + np.einsum("nd,nd->n", x[:, :d], world.user_vec[user])
    out = np.empty(int(test.sum()))
    test_idx = np.flatnonzero(test)
    pos = np.full(user.size, -1)
    pos[test_idx] = np.arange(test_idx.size)
    n_users = world.user_vec.shape[0]
    xs = x[:, cols]
    for rows, rows_te in zip(groups(user, np.flatnonzero(~test), n_users), groups(user, test_idx, n_users)):
        if rows_te.size == 0:
            continue
        if last is not None:
            rows = rows[-last:]
        if rows.size:
            theta, cov = fit_user(xs[rows], sim["y"][rows], off[rows], prec[cols])
        else:
            theta, cov = np.zeros(xs.shape[1]), np.diag(1.0 / prec[cols])
        xt = xs[rows_te]
        mean = off[rows_te] + xt @ theta
        var = np.einsum("nd,de,ne->n", xt, cov, xt)
        out[pos[rows_te]] = mean / np.sqrt(1.0 + np.pi * var / 8.0)
    return out


def estimated_item_vecs(cfg: GenerateConfig, sim: dict, test: np.ndarray) -> tuple[np.ndarray, float]:
    """The item vectors a learner could estimate from the items' own events before the test
    window if it knew every user exactly (per-item Bayesian logistic regression, prior
    N(0, I)): the item-side counterpart of :func:`ceiling`, and itself a ceiling of what a
    model learning users and items together reaches. Returns the (I, DIM) estimates and
    their correlation with the truth over the items seen (all coordinates pooled)."""
    world, user, item = sim["world"], sim["user"], sim["item"]
    xi = (cfg.item_taste * world.user_vec[user] + cfg.user_taste * world.user_taste[user]) / np.sqrt(DIM)
    off = sim["z"] - np.einsum("nd,nd->n", xi, world.item_vec[item])
    est = np.zeros_like(world.item_vec)
    by_item = groups(item, np.flatnonzero(~test), est.shape[0])
    for j, rows in enumerate(by_item):
        if rows.size:
            est[j], _ = fit_user(xi[rows], sim["y"][rows], off[rows], np.ones(DIM))
    seen = np.array([rows.size > 0 for rows in by_item])
    return est, float(np.corrcoef(est[seen].ravel(), world.item_vec[seen].ravel())[0, 1])


def factorisation(sim: dict, test: np.ndarray, valid: np.ndarray, dim: int = 16, weight_decay: float = 3e-3,
                  epochs: int = 30, patience: int = 3, seed: int = 0) -> tuple[np.ndarray, dict]:
    """A learned reference, not a ceiling: logistic matrix factorisation (a user vector, an
    item vector and a user bias, learned together with Adam and an L2 penalty on the rows a
    batch reads) on top of the true offset, i.e. a model that knows every term but the
    user-latent ones exactly and learns users and items from the ids alone. Trained on the
    rows before ``valid``, kept at its best validation AUC (``patience`` epochs without a
    better one stop it). Returns the test rows' logits and run facts."""
    import torch

    world = sim["world"]
    gen = torch.Generator().manual_seed(seed)
    n_users, n_items = world.user_vec.shape[0], world.item_vec.shape[0]
    user, item = torch.from_numpy(sim["user"]), torch.from_numpy(sim["item"])
    y, off = torch.from_numpy(sim["y"]).float(), torch.from_numpy(sim["offset"]).float()
    u_vec = torch.nn.Parameter(0.1 * torch.randn(n_users, dim, generator=gen))
    i_vec = torch.nn.Parameter(0.1 * torch.randn(n_items, dim, generator=gen))
    u_bias = torch.nn.Parameter(torch.zeros(n_users))
    opt = torch.optim.Adam([u_vec, i_vec, u_bias], lr=0.01)
    fit = torch.from_numpy(np.flatnonzero(~test & ~valid))
    val, tst = torch.from_numpy(np.flatnonzero(valid)), torch.from_numpy(np.flatnonzero(test))

    def logit(rows: torch.Tensor) -> torch.Tensor:
        return off[rows] + (u_vec[user[rows]] * i_vec[item[rows]]).sum(1) + u_bias[user[rows]]

    best, best_test, best_epoch, epoch = -1.0, None, 0, 0
    for epoch in range(1, epochs + 1):
        for rows in fit[torch.randperm(fit.numel(), generator=gen)].split(4096):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit(rows), y[rows]) + weight_decay * (
                u_vec[user[rows]].square().sum(1).mean() + i_vec[item[rows]].square().sum(1).mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            score = auc(sim["y"][valid], logit(val).numpy())
            if score > best:
                best, best_test, best_epoch = score, logit(tst).numpy().astype(np.float64), epoch
        if epoch - best_epoch >= patience:
            break
    return best_test, {"valid_auc": best, "best_epoch": best_epoch, "epochs": epoch, "dim": dim,
                       "weight_decay": weight_decay}


def learned_item_vecs(model_dir: Path, world, folds: int = 5, seed: int = 0) -> tuple[np.ndarray, float]:
    """The item vectors a trained DLRM bundle knows: each item's row of the bundle's ``item``
    embedding, mapped linearly onto the true ``world.item_vec`` (least squares with an
    intercept, fitted on the other folds' items, so an item's estimate never saw its own
    truth). Returns the (I, DIM) estimates and their correlation with the truth (all
    coordinates pooled)."""
    import torch

    from contract.spec import FeatureSpec
    from dlrm.bundle import load_model
    from features.categorize import hash_ids

    model, config = load_model(model_dir)
    spec = FeatureSpec.from_dict(config["feature_spec"])
    names = [f.name for f in spec.sparse]
    if "item" not in names:
        raise ValueError(f"model {model_dir}: no sparse feature 'item' (has {names})")
    t, size = names.index("item"), spec.sparse[names.index("item")].table_size
    ids = torch.from_numpy(hash_ids(np.asarray(list(world.item_ids), dtype=object), "item", size))
    n, tables = ids.numel(), len(names)
    values = torch.zeros(n, tables, dtype=torch.int64)
    values[:, t] = ids
    with torch.no_grad():
        emb = model.embedding(values.reshape(-1), torch.arange(n * tables + 1))[:, t].double().numpy()
    a = np.hstack([emb, np.ones((n, 1))])
    fold = np.random.default_rng(seed).permutation(n) % folds
    est = np.empty_like(world.item_vec)
    for k in range(folds):
        fit, out = fold != k, fold == k
        w, *_ = np.linalg.lstsq(a[fit], world.item_vec[fit], rcond=None)
        est[out] = a[out] @ w
    return est, float(np.corrcoef(est.ravel(), world.item_vec.ravel())[0, 1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("-S", dest="overrides", action="append", default=[], help="generate.KEY=VALUE")
    p.add_argument("--test-days", type=int, default=3, help="the test window (features.test_days)")
    p.add_argument("--last", default="20,100", help="comma-separated history lengths N for the 'last N' ceilings")
    p.add_argument("--item-corr", default="",
                   help="comma-separated correlations in (0, 1): also the ceilings (last N and all) of a learner "
                        "whose item vectors are the true ones blurred to that correlation")
    p.add_argument("--model", type=Path, action="append", default=[],
                   help="a trained model bundle (models/model) of the same world (repeatable): also the ceilings "
                        "of a learner whose item vectors are what that bundle's item embeddings know")
    p.add_argument("--mf", action="store_true",
                   help="also the learned reference: matrix factorisation of users and items on the true offset "
                        "(--valid-days before the test window pick its epoch)")
    p.add_argument("--valid-days", type=int, default=3, help="--mf: its validation window (features.valid_days)")
    p.add_argument("--model-auc", type=float, help="a model's test AUC (without the tower): the gap ratios against it")
    p.add_argument("--n-boot", type=int, default=500)
    p.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    args = p.parse_args()
    cfg = load_config(GenerateConfig, "generate", args.params, args.overrides)
    t0 = time.perf_counter()
    sim = simulate(cfg)
    test = sim["day"] >= cfg.days - args.test_days
    x = design(cfg, sim["world"], sim["item"])
    y_te = sim["y"][test]
    print(f"generate: rows={cfg.rows} users={cfg.users} items={cfg.items} days={cfg.days} seed={cfg.seed}; "
          f"simulated in {time.perf_counter() - t0:.1f}s; test window {int(test.sum()):,} rows, "
          f"{int(y_te.sum()):,} purchases")
    n_before = np.bincount(sim["user"][~test], minlength=cfg.users)[np.unique(sim["user"][test])]
    print(f"events before the test window per test user: median {np.median(n_before):.0f}, "
          f"10% {np.percentile(n_before, 10):.0f}, 90% {np.percentile(n_before, 90):.0f}")
    lasts = [int(v) for v in args.last.split(",") if v]
    longest_and_all = lasts[-1:] + [None]   # rows with estimated, blurred or a bundle's items: longest N, all
    oracle = auc(y_te, sim["z"][test])
    rows = [("oracle", sim["z"][test]), ("no user", sim["offset"][test])]
    for n in lasts:
        rows.append((f"last {n}", ceiling(sim, x, test, n, False)))
    rows.append(("all", ceiling(sim, x, test, None, False)))
    rows.append(("all, user_vec given", ceiling(sim, x, test, None, True)))
    noise = np.random.default_rng(cfg.seed + 1).normal(size=sim["world"].item_vec.shape)
    for rho in [float(v) for v in args.item_corr.split(",") if v]:
        if not 0 < rho < 1:
            raise ValueError(f"--item-corr {rho}: expected correlations in (0, 1)")
        blurred = design(cfg, sim["world"], sim["item"], rho * sim["world"].item_vec + np.sqrt(1 - rho ** 2) * noise)
        for n in longest_and_all:
            rows.append((f"{'all' if n is None else f'last {n}'}, item corr {rho:g}",
                         ceiling(sim, blurred, test, n, False)))
    item_corr = {}
    est, corr = estimated_item_vecs(cfg, sim, test)
    print(f"item vectors estimated from the items' events with every user known: correlation {corr:.3f}")
    item_corr["estimated, users known"] = corr
    estimated = design(cfg, sim["world"], sim["item"], est)
    for n in longest_and_all:
        rows.append((f"{'all' if n is None else f'last {n}'}, items estimated",
                     ceiling(sim, estimated, test, n, False)))
    facts = {}
    if args.mf:
        valid = (sim["day"] >= cfg.days - args.test_days - args.valid_days) & ~test
        score, facts["mf"] = factorisation(sim, test, valid)
        print(f"matrix factorisation on the true offset: best validation AUC {facts['mf']['valid_auc']:.4f} "
              f"at epoch {facts['mf']['best_epoch']} of {facts['mf']['epochs']}")
        rows.append(("matrix factorisation, rest known", score))
    for path in args.model:
        est, corr = learned_item_vecs(path, sim["world"])
        print(f"{path}: its item embeddings predict the true item vectors at correlation {corr:.3f}")
        learned = design(cfg, sim["world"], sim["item"], est)
        for n in longest_and_all:
            rows.append((f"{'all' if n is None else f'last {n}'}, items of {path.parent.name}/{path.name}",
                         ceiling(sim, learned, test, n, False)))
        item_corr[str(path)] = corr
    print(f"\n{'learner':<34}{'test AUC':>10}{'95% CI':>22}{'gap to oracle':>15}"
          + (f"{'gap ratio vs ' + format(args.model_auc, '.4f'):>22}" if args.model_auc else ""))
    out = {"oracle_auc": oracle, "model_auc": args.model_auc, "item_corr": item_corr, **facts, "rows": []}
    for name, score in rows:
        ci = bootstrap_auc(y_te, score, n_boot=args.n_boot)
        gap = oracle - ci["auc"]
        line = f"{name:<34}{ci['auc']:>10.4f}   [{ci['lo']:.4f}, {ci['hi']:.4f}]{gap:>15.4f}"
        ratio = None
        if args.model_auc:
            ratio = gap / (oracle - args.model_auc)
            line += f"{ratio:>22.2f}"
        print(line)
        out["rows"].append({"learner": name, "auc": ci["auc"], "lo": ci["lo"], "hi": ci["hi"], "gap": gap,
                            "gap_ratio": ratio})
    if args.model_auc:
        print(f"\na model at {args.model_auc:.4f} halves its gap to the oracle at AUC "
              f"{oracle - 0.5 * (oracle - args.model_auc):.4f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
