"""Comparison-graph analysis: the batched BFS test agrees with scipy's strongly connected components."""
import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components

from spo_tabular.graphs import comparison_graph, strongly_connected


@pytest.mark.parametrize("density", [0.05, 0.15, 0.4, 0.9])
def test_bfs_strong_connectivity_matches_scipy(density):
    rng = np.random.default_rng(int(density * 100))
    beats = rng.random((40, 9, 9)) < density
    beats[:, np.arange(9), np.arange(9)] = False
    expected = np.array([connected_components(b, directed=True, connection="strong")[0] == 1 for b in beats])
    np.testing.assert_array_equal(strongly_connected(beats), expected)
    report = comparison_graph(beats)
    np.testing.assert_array_equal(report.n_components == 1, expected)
    for x in range(40):
        n_comp, labels = connected_components(beats[x], directed=True, connection="strong")
        assert report.n_components[x] == n_comp
        i, j = np.nonzero(beats[x])
        assert report.unbounded[x] == bool(np.any(labels[i] != labels[j]))


def test_a_chain_is_not_strongly_connected_and_a_cycle_is():
    chain = np.zeros((1, 4, 4), bool)
    chain[0, 0, 1] = chain[0, 1, 2] = chain[0, 2, 3] = True
    cycle = chain.copy()
    cycle[0, 3, 0] = True
    assert not strongly_connected(chain)[0] and strongly_connected(cycle)[0]
    report = comparison_graph(chain)
    assert report.n_components[0] == 4 and report.unbounded[0]
