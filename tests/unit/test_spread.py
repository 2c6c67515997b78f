"""The pure rule that spreads project leases over replicas (daemon.leadership)."""

from __future__ import annotations

import pytest

from daemon.leadership import fair_share, may_take, surplus


@pytest.mark.parametrize(
    ("projects", "members", "share"),
    [(1, 1, 1), (1, 3, 1), (6, 1, 6), (6, 3, 2), (7, 3, 3), (50, 3, 17), (2, 5, 1), (0, 2, 1), (4, 0, 4)],
)
def test_the_fair_share_is_the_projects_over_the_replicas_rounded_up(projects, members, share):
    """Each replica may hold ceil(projects / replicas) leases, at least one (so a single project always has a holder)."""
    assert fair_share(projects, members) == share


@pytest.mark.parametrize(("held", "share", "take", "extra"), [(0, 2, True, 0), (1, 2, True, 0), (2, 2, False, 0), (5, 2, False, 3)])
def test_a_replica_takes_below_its_share_and_hands_over_above_it(held, share, take, extra):
    """Below the share a replica may take a free lease; at it, not; above it (replicas joined) it has a surplus to hand over."""
    assert (may_take(held, share), surplus(held, share)) == (take, extra)
