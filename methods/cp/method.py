"""Channel Pruning (He, Zhang, Sun, ICCV 2017): LASSO channel selection on the next layer.

For every consumer of the group (a member conv/linear pruned along its inputs), input channel c
contributes ``Z_c = X_c W_c^T`` to the consumer's output at the sampled positions (``inputs``
observation). CP's channel-selection step solves
``min_beta 1/(2M) ||Y - sum_c beta_c Z_c||^2 + alpha ||beta||_1`` with ``Y = sum_c Z_c``, and
keeps the channels with nonzero beta as alpha grows. We follow the LASSO path (coordinate
descent, Gram form, warm starts) from ``alpha_max`` down a geometric grid; a channel's score is
where it enters the path: higher alpha = more important (ties within one grid step broken by
|beta| there; channels that never enter score below every entered one, by how close they came).
Scores are in [0, 1] and averaged over the group's consumers.
"""

import torch

from specs.sdk import ImportanceMethod, contribution_gram, input_consumers, root_filter_norms


def _polish(Q: torch.Tensor, q: torch.Tensor, lam: float, b: list, live: torch.Tensor, tries: int = 10):
    """The exact LASSO solution near the coordinate-descent iterate ``b``, or None.

    On a fixed support S with signs s, the optimum solves ``Q_SS b_S = q_S - lam * s``; it is the
    global optimum iff its signs are s and ``|q - Q b| <= lam`` off S (KKT). Starting from the
    support and signs of ``b``, coordinates whose sign flips are dropped and KKT violators added
    (with the sign of their correlation) a few times; a candidate is returned only if it is optimal.
    """
    beta = torch.tensor(b, dtype=torch.float64)
    signs = beta.sign()
    for _ in range(tries):
        support = (signs != 0).nonzero().flatten()
        if len(support) == 0:
            return None
        try:
            sol = torch.linalg.solve(Q[support][:, support], q[support] - lam * signs[support])
        except RuntimeError:  # singular on this support: leave it to coordinate descent
            return None
        flipped = sol.sign() != signs[support]
        if bool(flipped.any()):
            signs[support[flipped]] = 0
            continue
        beta = torch.zeros_like(beta)
        beta[support] = sol
        r = q - Q @ beta
        violators = (signs == 0) & live & (r.abs() > lam * (1 + 1e-9))
        if not bool(violators.any()):
            return beta
        signs[violators] = r[violators].sign()
    return None


def lasso_cd(Q: torch.Tensor, q: torch.Tensor, lam: float, beta=None, tol: float = 1e-8,
             max_sweeps: int = 300) -> torch.Tensor:
    """``argmin_b 0.5 b^T Q b - q^T b + lam * ||b||_1`` by cyclic coordinate descent.

    This is sklearn's ``Lasso(alpha=lam / M, fit_intercept=False)`` on ``(Z, y)`` with
    ``Q = Z^T Z``, ``q = Z^T y`` and M rows. Sweeps run over the coordinates that may be nonzero
    (KKT: ``|q - Q b|_c > lam``) until the largest update is below ``tol * max|b|``; then the
    KKT conditions of the rest are checked again. Coordinates with ``Q_cc == 0`` stay 0. Every
    10 sweeps, once coordinate descent has found the support, :func:`_polish` tries the exact
    solution on it (CD alone converges slowly when channels are correlated). At most
    ``max_sweeps`` sweeps in all: when there are fewer sampled equations than channels the
    solution is not unique and CD may crawl; the last iterate is returned then.
    """
    Q, q = Q.double(), q.double()
    b = [0.0] * len(q) if beta is None else [float(v) for v in beta]
    rows = Q.unbind(0)  # Q is symmetric: column c = row c
    diag = Q.diagonal().tolist()
    live = Q.diagonal() > 0
    r = q - Q @ torch.tensor(b, dtype=torch.float64)  # minus the gradient of the smooth part
    sweep = 0
    while sweep < max_sweeps:
        nonzero = torch.tensor([v != 0 for v in b])
        active = ((nonzero | (r.abs() > lam)) & live).nonzero().flatten().tolist()
        while sweep < max_sweeps:
            sweep += 1
            biggest = 0.0
            for c in active:
                old, d = b[c], diag[c]
                z = r[c].item() + d * old
                new = 0.0 if abs(z) <= lam else (z - lam) / d if z > 0 else (z + lam) / d
                if new != old:
                    r.sub_(rows[c], alpha=new - old)
                    b[c] = new
                    biggest = max(biggest, abs(new - old))
            if biggest <= tol * max(map(abs, b), default=0.0) or biggest == 0.0:
                break
            if sweep % 10 == 0:
                exact = _polish(Q, q, lam, b, live)
                if exact is not None:
                    return exact
        beta_t = torch.tensor(b, dtype=torch.float64)
        if not ((beta_t == 0) & live & (r.abs() > lam * (1 + 1e-12))).any():
            break
    return torch.tensor(b, dtype=torch.float64)


def path_scores(Q: torch.Tensor, steps: int, min_ratio: float, tol: float) -> torch.Tensor:
    """Score in [0, 1] per channel from where it enters the LASSO path (see module docstring)."""
    n = Q.shape[0]
    q = Q.sum(1)  # Z^T y with y = sum_c Z_c
    live = Q.diagonal() > 0
    scores = torch.zeros(n, dtype=torch.float64)
    if not live.any():
        return scores
    lam_max = float(q[live].abs().max())
    if lam_max <= 0:
        return scores
    entered = torch.zeros(n, dtype=torch.bool)
    beta, lam = torch.zeros(n, dtype=torch.float64), lam_max
    for k in range(steps):
        lam = lam_max * min_ratio ** ((k + 1) / steps)
        beta = lasso_cd(Q, q, lam, beta, tol=tol)
        new = (beta != 0) & ~entered
        if new.any():
            tie = beta.abs()[new] / beta.abs()[new].max()
            scores[new] = (steps - k - 1 + 1e-3 + 0.998 * tie) / steps
            entered |= new
        if bool(entered[live].all()):
            break
    rest = ~entered  # never entered: below every entered channel, by |correlation| / lam (<= 1 by KKT)
    r = (q - Q @ beta).abs()
    scores[rest] = 1e-3 / steps * (r[rest] / lam).clamp(max=1.0)
    return scores


def fallback(group, obs) -> torch.Tensor:
    """No observed consumer: the root filters' L2 norm, divided by the largest (documented deviation)."""
    norms = root_filter_norms(group, obs.weights)
    if norms is None:
        return torch.ones(group.n_channels)
    return norms / norms.max() if norms.max() > 0 else norms


class Method(ImportanceMethod):
    def score_group(self, group, obs):
        total = torch.zeros(group.n_channels, dtype=torch.float64)
        count = torch.zeros(group.n_channels, dtype=torch.float64)
        for m in input_consumers(group, obs.inputs):
            Q, roots = contribution_gram(m, obs.inputs[m.layer], obs.weights[m.weight])
            total[roots] += path_scores(Q, self.hp["path_steps"], self.hp["min_ratio"], self.hp["tol"])
            count[roots] += 1
        if not count.any():
            return fallback(group, obs)
        return (total / count.clamp(min=1)).float()
