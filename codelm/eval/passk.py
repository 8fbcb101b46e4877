"""pass@k with the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code").

From n samples of which c pass, the probability that at least one of k samples
drawn without replacement passes is 1 - C(n - c, k) / C(n, k). The ratio is a
product of k terms, (1 - k / i) for i in n - c + 1 .. n, which stays exact in
floating point where the binomials themselves overflow. It is not the fraction
of problems where any of the n samples passed ("pass@n"), which overstates
pass@k for k < n.
"""

import math


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: n samples, c correct, k <= n."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every draw of k samples contains a correct one
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(results: list[tuple[int, int]], ks: list[int]) -> dict[int, float]:
    """Mean over problems of pass@k, for each k that every problem's sample count allows."""
    if not results:
        return {}
    n_min = min(n for n, _ in results)
    return {k: sum(pass_at_k(n, c, k) for n, c in results) / len(results) for k in ks if k <= n_min}
